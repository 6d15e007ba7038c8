import { assert, assertEquals } from "../../tests/support/assert.ts";
import { digestOf } from "../oci/digest.ts";
import { FilesystemStorage } from "../storage/filesystem.ts";
import { blobKey, blobLinkKey, manifestKey, tagKey } from "../storage/layout.ts";
import { CacheBound } from "./bound.ts";

const encoder = new TextEncoder();

async function putBlob(storage: FilesystemStorage, text: string): Promise<string> {
  const bytes = encoder.encode(text);
  const digest = digestOf(bytes);
  await storage.write(blobKey(digest), bytes, { digest });
  return digest;
}

/** An image manifest over `layers`, tagged `tag` in repository `repo` of registry.test. */
async function putImage(storage: FilesystemStorage, repo: string, tag: string, layers: string[]) {
  const bytes = encoder.encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: layers[0], size: 1 },
    layers: layers.slice(1).map((digest) => ({
      mediaType: "application/vnd.oci.image.layer.v1.tar",
      digest,
      size: 1,
    })),
  }));
  const digest = digestOf(bytes);
  await storage.write(manifestKey(digest), bytes, { digest });
  const link = { digest, mediaType: "x", size: bytes.byteLength, confirmedAt: 0 };
  await storage.write(tagKey("registry.test", repo, tag), encoder.encode(JSON.stringify(link)));
  return digest;
}

async function withStore(
  test: (storage: FilesystemStorage, clock: { now: number }) => Promise<void>,
) {
  const root = await Deno.makeTempDir({ prefix: "cache-bound-" });
  const storage = new FilesystemStorage(root);
  try {
    await test(storage, { now: Date.now() + 1000 });
  } finally {
    await storage.close();
    await Deno.remove(root, { recursive: true });
  }
}

Deno.test("bound: the least recently used image goes whole, a blob a kept image shares stays", async () => {
  await withStore(async (storage, clock) => {
    const shared = await putBlob(storage, "shared layer ".repeat(100));
    const oldOnly = await putBlob(storage, "old layer ".repeat(100));
    const newOnly = await putBlob(storage, "new layer ".repeat(100));
    const oldConfig = await putBlob(storage, "old config");
    const newConfig = await putBlob(storage, "new config");
    const hosted = await putBlob(storage, "hosted layer ".repeat(100));
    await storage.write(blobLinkKey("myorg/app", hosted), new Uint8Array());
    const oldImage = await putImage(storage, "old", "1", [oldConfig, shared, oldOnly]);
    const newImage = await putImage(storage, "new", "1", [newConfig, shared, newOnly]);
    const evicted: string[] = [];
    const bound = new CacheBound({
      storage,
      maxBytes: 4000,
      hosted: ["myorg"],
      graceMs: 60_000,
      log: () => {},
      now: () => clock.now,
      onEvicted: (keys) => evicted.push(...keys),
    });
    await bound.load();
    // The hosted blob is not counted: 1300 + 1000 + 1000, two configs, two manifests.
    assert(bound.index.bytes > 4000 && bound.index.bytes < 5000, `${bound.index.bytes}`);
    assert(!bound.index.has(blobKey(hosted)));
    clock.now += 120_000;
    bound.index.touch(manifestKey(newImage));
    clock.now += 120_000; // past the grace period for everything
    await bound.evict();
    assert(bound.index.bytes <= 4000 * 0.9, `${bound.index.bytes}`);
    for (const gone of [manifestKey(oldImage), blobKey(oldOnly), blobKey(oldConfig)]) {
      assertEquals(await storage.stat(gone), null, gone);
    }
    assertEquals(await storage.stat(tagKey("registry.test", "old", "1")), null);
    for (
      const kept of [manifestKey(newImage), blobKey(shared), blobKey(newOnly), blobKey(hosted)]
    ) {
      assert(await storage.stat(kept), kept);
    }
    assert(evicted.includes(manifestKey(oldImage)));
    assertEquals([bound.evictions, bound.evictedBytes > 1000], [1, true]);
  });
});

Deno.test("bound: a blob being read, or read within the grace period, is not evicted", async () => {
  await withStore(async (storage, clock) => {
    const layer = await putBlob(storage, "layer ".repeat(1000));
    const config = await putBlob(storage, "config");
    const image = await putImage(storage, "app", "1", [config, layer]);
    const bound = new CacheBound({
      storage,
      maxBytes: 100,
      hosted: [],
      graceMs: 60_000,
      log: () => {},
      now: () => clock.now,
    });
    await bound.load();
    clock.now += 120_000;
    const object = (await storage.read(blobKey(layer)))!;
    const body = bound.index.reading(blobKey(layer), object.body);
    clock.now += 120_000; // a slow reader: its start is long past the grace period
    await bound.evict();
    assert(await storage.stat(blobKey(layer)));
    assert(await storage.stat(manifestKey(image)));
    assertEquals(
      new TextDecoder().decode(await new Response(body).arrayBuffer()),
      "layer ".repeat(1000),
    );
    await bound.evict(); // just read: within the grace period
    assert(await storage.stat(blobKey(layer)));
    clock.now += 61_000;
    await bound.evict();
    assertEquals(await storage.stat(blobKey(layer)), null);
    assertEquals(await storage.stat(manifestKey(image)), null);
    assertEquals(bound.index.bytes, 0);
  });
});

Deno.test("bound: access times are written in one batch and read back by the next process", async () => {
  await withStore(async (storage, clock) => {
    const old = await putImage(storage, "a", "1", [await putBlob(storage, "a")]);
    const young = await putImage(storage, "b", "1", [await putBlob(storage, "b")]);
    const options = { storage, maxBytes: 1, hosted: [], graceMs: 0, log: () => {} };
    const first = new CacheBound({ ...options, now: () => clock.now });
    await first.load();
    // Both were written now; the first process reads `old` later than `young`.
    clock.now += 1000;
    first.index.touch(manifestKey(young));
    clock.now += 1000;
    first.index.touch(manifestKey(old));
    await first.flush();
    const second = new CacheBound({ ...options, now: () => clock.now });
    await second.load();
    assertEquals(second.index.units().map((u) => u.root.key), [
      manifestKey(young),
      manifestKey(old),
    ]);
  });
});
