/**
 * A full cache disk, for real: the mirror's root is a tmpfs (`mount -t tmpfs -o size=...`, root
 * only), the upstream Debian's docker-registry. Once the disk is filled, everything cached is
 * still served byte-exact, a cold blob larger than the free space streams through to several
 * clients from ONE upstream download, nothing partial is left behind, /metrics says the store
 * is full, and once space is freed the next pull is cached again.
 */
import { createHash } from "node:crypto";
import { assert, assertEquals, assertMatch } from "../support/assert.ts";
import { buildImage, pushImage, pushRandomBlob } from "../support/images.ts";
import { startMirror } from "../support/mirror.ts";
import { startUpstream } from "../support/upstream.ts";
import { delay, pathExists, tempDir, waitFor } from "../support/tools.ts";

const NS = "registry.test";
const MiB = 1 << 20;
const isRoot = Deno.uid() === 0;
if (!isRoot) console.error("store_full_test: skipped, mounting a tmpfs needs root");

Deno.test({
  name: "full cache disk (tmpfs): cached content served, cold blob streams through once, heals",
  ignore: !isRoot,
  async fn() {
    await using dir = await tempDir("store-full-");
    const disk = dir.join("disk");
    await Deno.mkdir(disk);
    await run("mount", ["-t", "tmpfs", "-o", "size=64m", "tmpfs", disk]);
    try {
      await using up = await startUpstream();
      await using mirror = await startMirror({
        root: `${disk}/cache`,
        upstreams: [{ namespace: NS, host: up.host, tls: false, manifest_invalidation_time: "1s" }],
      });
      const image = await pushImage(up, "library/app", "1", buildImage({ layerSize: 256 * 1024 }));
      const big = await pushRandomBlob(up, "library/app", 40 * MiB); // fits only an empty disk
      const manifestPath = (reference: string) => `/v2/${NS}/library/app/manifests/${reference}`;
      const blobPath = (digest: string) => `/v2/${NS}/library/app/blobs/${digest}`;
      const accept = { headers: { accept: image.mediaType } };

      // Cache the image, then fill the disk.
      assertEquals(await bytesOf(mirror.fetch(manifestPath("1"), accept)), image.manifest.bytes);
      for (const blob of [image.config, ...image.layers]) {
        assertEquals(await bytesOf(mirror.fetch(blobPath(blob.digest))), blob.bytes);
      }
      await waitFor(async () =>
        await pathExists(`${disk}/cache/blobs/sha256/${image.layers[0].sha256.slice(0, 2)}`)
      );
      const filler = `${disk}/filler`;
      await fill(filler);
      await delay(1100); // past manifest_invalidation_time: the tag is revalidated
      up.clearLog();

      // Everything cached is served, byte-exact, the tag after a revalidation.
      assertEquals(await bytesOf(mirror.fetch(manifestPath("1"), accept)), image.manifest.bytes);
      assertEquals(await up.countManifestHeads("1"), 1, "the tag was revalidated");
      assertEquals(
        await bytesOf(mirror.fetch(manifestPath(image.digest), accept)),
        image.manifest.bytes,
      );
      for (const blob of [image.config, ...image.layers]) {
        assertEquals(await bytesOf(mirror.fetch(blobPath(blob.digest))), blob.bytes);
      }

      // A cold blob larger than the free space: byte-exact for four clients, one upstream GET.
      const sums = await Promise.all(Array.from({ length: 4 }, async () => {
        const response = await mirror.fetch(blobPath(big.digest));
        assertEquals(response.status, 200);
        assertEquals(response.headers.get("content-length"), String(big.size));
        return await sha256Of(response);
      }));
      for (const sum of sums) assertEquals(sum, big.sha256);
      assertEquals(await up.countBlobGets(big.digest), 1, "one upstream download for all four");
      await waitFor(
        async () =>
          /^oci_registry_cache_requests_total\{namespace="registry\.test",kind="blob",result="uncached"\} 1$/m
            .test(
              await (await mirror.fetch("/metrics")).text(),
            ),
        { message: "the blob counted as passed through uncached" },
      );
      assertEquals(await leftovers(`${disk}/cache`, big.sha256), [], "nothing partial left");
      assertMatch(mirror.logs(), /store full: /);
      assert(
        !/upstream/.test(mirror.logs().split("\n").filter((l) => /store full/.test(l)).join()),
        "a full disk is not reported as an upstream error",
      );
      assertEquals(await storageFullGauge(mirror.fetch("/metrics")), "1");

      // Space returns: the next pull is cached and the gauge drops back to 0.
      await Deno.remove(filler);
      assertEquals(await sha256Of(await mirror.fetch(blobPath(big.digest))), big.sha256);
      const stored = `${disk}/cache/blobs/sha256/${big.sha256.slice(0, 2)}/${big.sha256}`;
      await waitFor(() => pathExists(stored), { message: "the blob to be cached" });
      assertEquals(await storageFullGauge(mirror.fetch("/metrics")), "0");
      await up.stop();
      assertEquals(await sha256Of(await mirror.fetch(blobPath(big.digest))), big.sha256);
      assertEquals(await bytesOf(mirror.fetch(manifestPath("1"), accept)), image.manifest.bytes);
    } finally {
      await run("umount", [disk]);
    }
  },
});

async function run(command: string, args: string[]): Promise<void> {
  const out = await new Deno.Command(command, { args, stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`${command} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** Writes zeros to `path` until the disk refuses more. */
async function fill(path: string): Promise<void> {
  using file = await Deno.open(path, { write: true, createNew: true });
  const zeros = new Uint8Array(MiB);
  try {
    for (;;) await file.write(zeros);
  } catch (e) {
    assertMatch(String(e), /No space left on device/);
  }
}

async function bytesOf(response: Promise<Response>): Promise<Uint8Array> {
  const r = await response;
  assertEquals(r.status, 200, `${r.url}`);
  return new Uint8Array(await r.arrayBuffer());
}

async function sha256Of(response: Response): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of response.body!) hash.update(chunk);
  return hash.digest("hex");
}

async function storageFullGauge(response: Promise<Response>): Promise<string | undefined> {
  const text = await (await response).text();
  return /^oci_registry_storage_full (\d+)$/m.exec(text)?.[1];
}

/** Spools and temp files left in the root, and any file of the blob `sha256`. */
async function leftovers(root: string, sha256: string): Promise<string[]> {
  const found: string[] = [];
  for await (const entry of Deno.readDir(`${root}/.tmp`)) {
    if (entry.name !== ".lock") found.push(`.tmp/${entry.name}`);
  }
  if (await pathExists(`${root}/blobs/sha256/${sha256.slice(0, 2)}/${sha256}`)) {
    found.push(`blobs/.../${sha256}`);
  }
  return found;
}
