/**
 * What only the S3 back-end does: several mirror processes sharing one bucket, large blobs
 * streamed through without buffering, and --s3-redirect handing blob bytes to S3 directly.
 */
import { createHash } from "node:crypto";
import { assert, assertEquals, assertMatch } from "../support/assert.ts";
import { buildImage, pushImage, pushRandomBlob, skopeoPullDir } from "../support/images.ts";
import { startMirror } from "../support/mirror.ts";
import { s3MirrorArgs, startS3rver } from "../support/s3rver.ts";
import { startUpstream } from "../support/upstream.ts";
import { sha256File, tempDir } from "../support/tools.ts";

const NS = "registry.test";

async function sha256Of(response: Response): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of response.body!) hash.update(chunk);
  return hash.digest("hex");
}

Deno.test("two mirrors sharing one bucket: what one cached the other serves with no upstream request", async () => {
  await using up = await startUpstream();
  const s3 = await startS3rver("shared-cache");
  try {
    const upstreams = [{ namespace: NS, host: up.host, tls: false }];
    await using first = await startMirror({
      upstreams,
      storageArgs: s3MirrorArgs(s3),
    });
    await using second = await startMirror({
      upstreams,
      storageArgs: s3MirrorArgs(s3),
    });
    const image = await pushImage(up, "library/shared", "1", buildImage({ layers: 3 }));
    await using dest = await tempDir();
    await skopeoPullDir({ host: first.host }, `${NS}/library/shared`, "1", dest.join("one"));

    up.clearLog();
    await skopeoPullDir({ host: second.host }, `${NS}/library/shared`, "1", dest.join("two"));
    for (const blob of [image.config, ...image.layers]) {
      assertEquals(await sha256File(dest.join("two", blob.sha256)), blob.sha256);
    }
    assertEquals(await up.count(), 0, "the second mirror asked upstream nothing");
  } finally {
    await s3.stop();
  }
});

Deno.test("a 512 MiB blob pulled cold through the S3-backed mirror is byte-exact", async () => {
  await using up = await startUpstream();
  const s3 = await startS3rver("big-blobs");
  try {
    await using mirror = await startMirror({
      upstreams: [{ namespace: NS, host: up.host, tls: false }],
      storageArgs: s3MirrorArgs(s3),
    });
    const blob = await pushRandomBlob(up, "library/huge", 512 << 20);
    const path = `/v2/library/huge/blobs/${blob.digest}?ns=${NS}`;
    const cold = await mirror.fetch(path);
    assertEquals(cold.headers.get("content-length"), String(blob.size));
    assertEquals(await sha256Of(cold), blob.sha256);
    // Once stored (the upload to S3 finishes after the client got its bytes), S3 serves it.
    up.clearLog();
    await up.stop();
    let warm: Response | undefined;
    // (s3rver, unlike S3, shows a multipart object while it is still joining the parts: wait
    // for the whole object rather than the first 200.)
    const whole = (r?: Response) =>
      r?.status === 200 && r.headers.get("content-length") === String(blob.size);
    for (let attempt = 0; attempt < 120 && !whole(warm); attempt++) {
      await warm?.body?.cancel();
      if (attempt) await new Promise((r) => setTimeout(r, 500));
      warm = await mirror.fetch(path);
    }
    assertEquals(warm!.status, 200);
    assertEquals(await sha256Of(warm!), blob.sha256);
  } finally {
    await s3.stop();
  }
});

Deno.test("--s3-redirect: blob GETs answer 307 to a presigned S3 URL, manifests are served", async () => {
  await using up = await startUpstream();
  await using spool = await tempDir();
  const s3 = await startS3rver("redirects");
  try {
    await using mirror = await startMirror({
      upstreams: [{ namespace: NS, host: up.host, tls: false }],
      // A --spool-dir that does not exist yet is created.
      storageArgs: s3MirrorArgs(s3, "--s3-redirect", "--spool-dir", `${spool.path}/not/yet`),
    });
    const image = await pushImage(up, "library/redirected", "1", buildImage());
    await using dest = await tempDir();
    // A cold pull streams through the mirror and fills the bucket.
    await skopeoPullDir({ host: mirror.host }, `${NS}/library/redirected`, "1", dest.join("cold"));

    const layer = image.layers[0];
    const response = await mirror.fetch(`/v2/library/redirected/blobs/${layer.digest}?ns=${NS}`, {
      redirect: "manual",
    });
    await response.body?.cancel();
    assertEquals(response.status, 307);
    const location = response.headers.get("location")!;
    assert(location.startsWith(s3.endpoint), location);
    assertMatch(location, /X-Amz-Signature=/);
    const direct = await fetch(location);
    assertEquals(new Uint8Array(await direct.arrayBuffer()), layer.bytes);

    // A real client follows the redirects and gets identical bytes, without upstream.
    await up.stop();
    await skopeoPullDir({ host: mirror.host }, `${NS}/library/redirected`, "1", dest.join("warm"));
    for (const blob of [image.config, ...image.layers]) {
      assertEquals(await sha256File(dest.join("warm", blob.sha256)), blob.sha256);
    }
  } finally {
    await s3.stop();
  }
});
