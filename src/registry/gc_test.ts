import { assert, assertEquals } from "../../tests/support/assert.ts";
import { digestOf } from "../oci/digest.ts";
import { FilesystemStorage } from "../storage/filesystem.ts";
import {
  blobKey,
  blobLinkKey,
  manifestKey,
  tagKey,
  uploadChunkKey,
  uploadPrefix,
} from "../storage/layout.ts";
import type { Storage } from "../storage/storage.ts";
import { collectGarbage, findGarbage, formatReport, type GcOptions } from "./gc.ts";

const encoder = new TextEncoder();

async function blob(storage: Storage, text: string): Promise<string> {
  const bytes = encoder.encode(text);
  const digest = digestOf(bytes);
  await storage.write(blobKey(digest), bytes, { digest });
  return digest;
}

function manifestOver(layers: string[]): Uint8Array {
  return encoder.encode(JSON.stringify({
    schemaVersion: 2,
    config: { digest: layers[0] },
    layers: layers.slice(1).map((digest) => ({ digest })),
  }));
}

async function withStore(test: (storage: FilesystemStorage, root: string) => Promise<void>) {
  const root = await Deno.makeTempDir({ prefix: "gc-" });
  const storage = new FilesystemStorage(root);
  try {
    await test(storage, root);
  } finally {
    await storage.close();
    await Deno.remove(root, { recursive: true });
  }
}

Deno.test("gc finds orphans, dangling tags, expired uploads and stale spools; keeps the rest", async () => {
  await withStore(async (storage, root) => {
    const kept = await blob(storage, "layer of a manifest");
    const config = await blob(storage, "config");
    const manifest = manifestOver([config, kept]);
    const manifestDigest = digestOf(manifest);
    await storage.write(manifestKey(manifestDigest), manifest, { digest: manifestDigest });
    const link = (digest: string) => encoder.encode(JSON.stringify({ digest }));
    await storage.write(tagKey("registry.test", "app", "1"), link(manifestDigest));
    const hosted = await blob(storage, "pushed, manifest to come");
    await storage.write(blobLinkKey("myorg/app", hosted), new Uint8Array());
    const orphan = await blob(storage, "nobody's");
    const dangling = tagKey("registry.test", "gone", "1");
    await storage.write(dangling, link(digestOf(encoder.encode("never stored"))));
    const expired = crypto.randomUUID();
    const live = crypto.randomUUID();
    const info = (touched: number) =>
      encoder.encode(JSON.stringify({ name: "myorg/app", touched }));
    await storage.write(`${uploadPrefix(expired)}info`, info(0));
    await storage.write(uploadChunkKey(expired, 0), encoder.encode("abc"));
    await storage.write(`${uploadPrefix(live)}info`, info(Date.now()));
    await Deno.writeTextFile(`${root}/.tmp/left-behind`, "spool");
    await Deno.utime(`${root}/.tmp/left-behind`, 0, 0);
    await Deno.writeTextFile(`${root}/.tmp/in-use`, "spool");

    const options: GcOptions = {
      storage,
      hosted: ["myorg"],
      minAgeMs: 0,
      uploadExpiryMs: 3600_000,
      spools: [{ dir: `${root}/.tmp`, maxAgeMs: 3600_000, keep: (name) => name === ".lock" }],
    };
    const found = await findGarbage(options);
    assertEquals(found.map((g) => [g.kind, g.key]).sort(), [
      ["expired upload", uploadPrefix(expired)],
      ["orphaned blob", blobKey(orphan)],
      ["stale spool", `${root}/.tmp/left-behind`],
      ["tag link to a missing manifest", dangling],
    ]);
    // Every object is seconds old: a safety age keeps all of them (the upload too: a chunk
    // written a moment ago says someone is still at it), only the old spool goes.
    const young = await findGarbage({ ...options, minAgeMs: 60_000 });
    assertEquals(young.map((g) => g.kind), ["stale spool"]);

    const report = await collectGarbage(options, true);
    assertEquals(report.removed.length, 4);
    assertEquals(report.bytes, found.reduce((sum, g) => sum + g.bytes, 0));
    assertEquals(await storage.stat(blobKey(orphan)), null);
    assertEquals(await storage.stat(dangling), null);
    assertEquals(await storage.stat(`${uploadPrefix(expired)}info`), null);
    for (const key of [blobKey(kept), blobKey(hosted), `${uploadPrefix(live)}info`]) {
      assert(await storage.stat(key), key);
    }
    assert(await Deno.stat(`${root}/.tmp/in-use`));
    assertEquals(await findGarbage(options), []);
    assert(formatReport(report, true).endsWith(`4 object(s), ${report.bytes} bytes freed`));
  });
});

Deno.test("gc re-lists references before deleting: a manifest stored meanwhile keeps its blob", async () => {
  await withStore(async (storage) => {
    const layer = await blob(storage, "blob another replica is about to reference");
    let manifestLists = 0;
    // A replica stores the manifest between the scan and the deletion.
    const racing: Storage = {
      description: storage.description,
      stat: (key) => storage.stat(key),
      read: (key, range) => storage.read(key, range),
      readBytes: (key) => storage.readBytes(key),
      write: (key, data, options) => storage.write(key, data, options),
      publishFile: (key, path, options) => storage.publishFile(key, path, options),
      delete: (key) => storage.delete(key),
      move: (from, to) => storage.move(from, to),
      async *list(prefix) {
        if (prefix === "manifests/" && ++manifestLists === 2) {
          const manifest = manifestOver([layer]);
          const digest = digestOf(manifest);
          await storage.write(manifestKey(digest), manifest, { digest });
        }
        yield* storage.list(prefix);
      },
    };
    const report = await collectGarbage(
      { storage: racing, hosted: [], minAgeMs: 0, uploadExpiryMs: 1 },
      true,
    );
    assertEquals(report.found.map((g) => g.key), [blobKey(layer)]);
    assertEquals(report.removed, []);
    assert(await storage.stat(blobKey(layer)));
  });
});
