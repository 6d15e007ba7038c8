/**
 * Two replicas of a hosted registry on one S3 bucket (s3rver) see each other's pushes, uploads
 * included: an upload started on one continues and finishes on the other.
 */
import { createHash } from "node:crypto";
import { assertEquals } from "../support/assert.ts";
import { startMirror } from "../support/mirror.ts";
import { s3MirrorArgs, startS3rver } from "../support/s3rver.ts";

const sha256 = (bytes: string) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

Deno.test("two replicas on one bucket: an upload moves between them, pushes are seen by both", async () => {
  const s3 = await startS3rver("hosted-replicas");
  try {
    const options = {
      extraArgs: ["--hosted", "myorg", "--allow-anonymous-push"],
      storageArgs: s3MirrorArgs(s3),
    };
    await using a = await startMirror(options);
    await using b = await startMirror(options);
    const post = await a.fetch("/v2/myorg/app/blobs/uploads/", { method: "POST" });
    const location = post.headers.get("location")!;
    await post.body?.cancel();
    const first = await a.fetch(location, {
      method: "PATCH",
      body: "hello, ",
      headers: { "content-range": "0-6" },
    });
    assertEquals(first.status, 202);
    await first.body?.cancel();
    const status = await b.fetch(location);
    assertEquals([status.status, status.headers.get("range")], [204, "0-6"]);
    await status.body?.cancel();
    const layer = sha256("hello, world");
    const done = await b.fetch(`${location}?digest=${layer}`, { method: "PUT", body: "world" });
    assertEquals(done.status, 201);
    await done.body?.cancel();
    assertEquals(await (await a.fetch(`/v2/myorg/app/blobs/${layer}`)).text(), "hello, world");

    const config = sha256("{}");
    const c = await a.fetch(`/v2/myorg/app/blobs/uploads/?digest=${config}`, {
      method: "POST",
      body: "{}",
    });
    assertEquals(c.status, 201);
    await c.body?.cancel();
    const manifest = JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: config, size: 2 },
      layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", digest: layer, size: 12 }],
    });
    const put = await b.fetch("/v2/myorg/app/manifests/1", {
      method: "PUT",
      body: manifest,
      headers: { "content-type": "application/vnd.oci.image.manifest.v1+json" },
    });
    assertEquals(put.status, 201);
    await put.body?.cancel();
    const got = await a.fetch("/v2/myorg/app/manifests/1");
    assertEquals([got.status, await got.text()], [200, manifest]);
    assertEquals(await (await a.fetch("/v2/myorg/app/tags/list")).json(), {
      name: "myorg/app",
      tags: ["1"],
    });
    const deleted = await a.fetch(`/v2/myorg/app/manifests/${sha256(manifest)}`, {
      method: "DELETE",
    });
    assertEquals(deleted.status, 202);
    await deleted.body?.cancel();
    const gone = await b.fetch("/v2/myorg/app/manifests/1");
    assertEquals(gone.status, 404, "the delete is seen by the other replica");
    await gone.body?.cancel();
  } finally {
    await s3.stop();
  }
});
