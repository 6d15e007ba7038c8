/**
 * A full store, for real: the cache root is a small tmpfs (root only; skipped otherwise). What a
 * client sees must not change while the disk is full, apart from nothing new being cached.
 * tests/e2e/store_full_test.ts proves the same with a real mirror process and registry.
 */
import { assert, assertEquals, assertMatch } from "../../tests/support/assert.ts";
import { UpstreamRegistry } from "../config/upstreams.ts";
import { concatBytes } from "../runtime/bytes.ts";
import { digestOf } from "../oci/digest.ts";
import { Metrics } from "../runtime/metrics.ts";
import { RegistryError } from "../oci/errors.ts";
import { OCI_MANIFEST } from "../oci/media_types.ts";
import { blobKey, manifestKey } from "../storage/layout.ts";
import { FilesystemStorage } from "../storage/filesystem.ts";
import { Mirror } from "./mirror.ts";
import { FakeUpstream, randomBytes, readAll, readRest } from "../../tests/support/fake_upstream.ts";

const NS = "registry.test";
const REPO = "library/app";
const MiB = 1 << 20;
const isRoot = Deno.uid() === 0;

interface Fixture {
  mirror: Mirror;
  upstream: FakeUpstream;
  storage: FilesystemStorage;
  metrics: Metrics;
  logs: string[];
  clock: { now: number };
  root: string;
  /** Fills the disk with a filler file; returns a function that deletes it. */
  fill(): Promise<() => Promise<void>>;
}

async function withFullableMirror(
  sizeMiB: number,
  fn: (f: Fixture) => Promise<void>,
  options: { stalledReaderMs?: number } = {},
) {
  const root = await Deno.makeTempDir({ prefix: "store-full-" });
  const mount = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", `size=${sizeMiB}m`, "tmpfs", root],
  }).output();
  assert(mount.success, new TextDecoder().decode(mount.stderr));
  try {
    const storage = new FilesystemStorage(`${root}/cache`);
    const upstream = new FakeUpstream();
    const metrics = new Metrics();
    const logs: string[] = [];
    const clock = { now: 1_000_000 };
    const mirror = new Mirror({
      storage,
      upstream,
      upstreams: new UpstreamRegistry([{
        namespace: NS,
        host: "127.0.0.1:1",
        tls: false,
        acceptInvalidCerts: false,
        manifestInvalidationMs: 60_000,
        blobInvalidationMs: 30 * 86_400_000,
        configured: true,
      }]),
      spoolDir: storage.tempDir,
      log: (line) => logs.push(line),
      metrics,
      now: () => clock.now,
      stalledReaderMs: options.stalledReaderMs,
    });
    const fill = async () => {
      const path = `${root}/filler`;
      using file = await Deno.open(path, { write: true, create: true });
      const zeros = new Uint8Array(256 * 1024);
      try {
        for (;;) await file.write(zeros);
      } catch { /* ENOSPC: full */ }
      return () => Deno.remove(path);
    };
    try {
      await fn({ mirror, upstream, storage, metrics, logs, clock, root, fill });
    } finally {
      await mirror.settled();
      await storage.close();
    }
  } finally {
    await new Deno.Command("umount", { args: [root] }).output();
    await Deno.remove(root, { recursive: true });
  }
}

function join(chunks: Uint8Array[]): Uint8Array {
  return concatBytes(chunks, chunks.reduce((n, c) => n + c.byteLength, 0));
}

function gauge(metrics: Metrics): string | undefined {
  return /^oci_registry_storage_full (\d)$/m.exec(metrics.render())?.[1];
}

function leftovers(storage: FilesystemStorage): string[] {
  return [...Deno.readDirSync(storage.tempDir)].map((e) => e.name).filter((n) => n !== ".lock");
}

const image = (config: string) => ({
  schemaVersion: 2,
  mediaType: OCI_MANIFEST,
  config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: config, size: 2 },
  layers: [],
});

Deno.test({
  name: "store full: a blob larger than the free space streams through, once, uncached",
  ignore: !isRoot,
  fn: () =>
    withFullableMirror(4, async ({ mirror, upstream, storage, metrics, logs }) => {
      const bytes = randomBytes(12 * MiB + 5);
      const digest = upstream.addBlob(bytes);
      upstream.byteStreams = true;
      upstream.chunkSize = 256 * 1024;
      const blobs = await Promise.all(
        Array.from({ length: 5 }, () => mirror.getBlob(NS, REPO, digest, { body: true })),
      );
      // Read together, as clients do: a pass-through goes at the pace of its slowest reader.
      const results = await Promise.all(blobs.map((blob) => readAll(blob.body!)));
      for (const result of results) assertEquals(digestOf(result), digest);
      assertEquals(upstream.count("blob", "GET"), 1, "one upstream download for all five");
      await mirror.settled();
      assertEquals(await storage.stat(blobKey(digest)), null, "nothing published");
      assertEquals(leftovers(storage), [], "spool removed");
      assertEquals(gauge(metrics), "1");
      assertEquals(metrics.cache.get({ namespace: NS, kind: "blob", result: "uncached" }), 1);
      assertMatch(logs.join("\n"), /store full: blob sha256:\w+ passed through uncached/);
      assert(!logs.some((l) => /upstream/.test(l)), logs.join("\n"));

      // Not cached, so asked for again; a blob that fits is cached and clears the state.
      const again = await mirror.getBlob(NS, REPO, digest, { body: true });
      assertEquals(digestOf(await readAll(again.body!)), digest);
      assertEquals(upstream.count("blob", "GET"), 2);
      // Its refusal is recorded as the download ends, a moment after the client has the last
      // byte: let it end, so that the small blob's success below is the latest word.
      await mirror.settled();
      const small = upstream.addBlob(randomBytes(100_000));
      await readAll((await mirror.getBlob(NS, REPO, small, { body: true })).body!);
      await mirror.settled();
      assertEquals((await storage.stat(blobKey(small)))?.size, 100_000);
      assertEquals(gauge(metrics), "0");
      assertMatch(logs.join("\n"), /store has space again/);
    }),
});

Deno.test({
  name: "store full: the slowest reader paces a pass-through; memory stays bounded",
  ignore: !isRoot,
  fn: () =>
    withFullableMirror(4, async ({ mirror, upstream, fill }) => {
      await fill();
      const bytes = randomBytes(16 * MiB);
      const digest = upstream.addBlob(bytes);
      upstream.byteStreams = true;
      upstream.chunkSize = 256 * 1024;
      const slow = (await mirror.getBlob(NS, REPO, digest, { body: true })).body!.getReader();
      const fast = (await mirror.getBlob(NS, REPO, digest, { body: true })).body!.getReader();
      const first = await slow.read();
      let ahead = 0;
      const fastChunks: Uint8Array[] = [];
      let pending = fast.read();
      for (;;) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const next = await Promise.race([
          pending,
          new Promise<null>((resolve) => timer = setTimeout(() => resolve(null), 300)),
        ]);
        clearTimeout(timer);
        if (next === null) break; // blocked: waiting for the slow reader
        assert(!next.done, "the fast reader must not finish while the slow one stalls");
        fastChunks.push(next.value);
        ahead += next.value.byteLength;
        pending = fast.read();
      }
      // Three 1 MiB blocks in memory, plus the one arriving.
      assert(ahead <= 4 * MiB, `the fast reader got ${ahead} bytes ahead of a stalled one`);
      assert(ahead >= 2 * MiB, `the fast reader got only ${ahead} bytes`);
      // Once the slow reader reads again, both finish with the right bytes.
      const [slowRest, fastRest] = await Promise.all([
        readRest(slow),
        pending.then(async (r) => join([r.value ?? new Uint8Array(), await readRest(fast)])),
      ]);
      assertEquals(digestOf(join([first.value!, slowRest])), digest);
      assertEquals(digestOf(join([...fastChunks, fastRest])), digest);
      assertEquals(upstream.count("blob", "GET"), 1);
    }),
});

Deno.test({
  name: "store full: a request after the first bytes left memory starts a fresh download",
  ignore: !isRoot,
  fn: () =>
    withFullableMirror(4, async ({ mirror, upstream, fill, storage }) => {
      await fill();
      const bytes = randomBytes(10 * MiB);
      const digest = upstream.addBlob(bytes);
      upstream.byteStreams = true;
      upstream.chunkSize = 256 * 1024;
      upstream.chunkDelayMs = 2;
      const reader = (await mirror.getBlob(NS, REPO, digest, { body: true })).body!.getReader();
      let got = 0;
      while (got < 6 * MiB) got += (await reader.read()).value!.byteLength;
      const late = await mirror.getBlob(NS, REPO, digest, { body: true });
      assertEquals(digestOf(await readAll(late.body!)), digest, "the late request");
      assertEquals(upstream.count("blob", "GET"), 2);
      for (let r = await reader.read(); !r.done; r = await reader.read()) got += r.value.byteLength;
      assertEquals(got, bytes.byteLength);
      await mirror.settled();
      assertEquals(leftovers(storage), []);
    }),
});

Deno.test({
  name: "store full: cached tags revalidate and serve, new manifests pass through, then heal",
  ignore: !isRoot,
  fn: () =>
    withFullableMirror(2, async ({ mirror, upstream, storage, metrics, logs, clock, fill }) => {
      const cached = upstream.addManifest("1", image("sha256:" + "a".repeat(64)));
      assertEquals((await mirror.getManifest(NS, REPO, "1", [])).digest, cached);
      const free = await fill();

      clock.now += 2 * 60_000; // past manifest_invalidation_time: revalidated with a HEAD
      assertEquals((await mirror.getManifest(NS, REPO, "1", [])).digest, cached);
      assertEquals(upstream.calls.map((c) => c.method), ["GET", "HEAD"]);
      assertEquals(gauge(metrics), "1");
      assertMatch(
        logs.join("\n"),
        /store full: tag link registry\.test\/library\/app:1 not recorded/,
      );

      const fresh = upstream.addManifest("2", image("sha256:" + "b".repeat(64)));
      assertEquals((await mirror.getManifest(NS, REPO, "2", [])).digest, fresh);
      assertEquals(await storage.stat(manifestKey(fresh)), null, "passed through uncached");
      assertEquals(metrics.cache.get({ namespace: NS, kind: "manifest", result: "uncached" }), 1);
      assertEquals((await mirror.getManifest(NS, REPO, "2", [])).digest, fresh);
      assertEquals(upstream.count("manifest", "GET"), 3, "not cached, so fetched again");

      await free();
      assertEquals((await mirror.getManifest(NS, REPO, "2", [])).digest, fresh);
      assert(await storage.stat(manifestKey(fresh)), "cached once space returned");
      assertEquals(gauge(metrics), "0");
      upstream.failure = new RegistryError("UNAVAILABLE", "down");
      assertEquals((await mirror.getManifest(NS, REPO, "2", [])).digest, fresh);
      assert(!logs.some((l) => /upstream/.test(l) && /store/.test(l)), logs.join("\n"));
    }),
});

Deno.test({
  name: "store full: a cold range still holds back its last byte, and still completes",
  ignore: !isRoot,
  fn: () =>
    withFullableMirror(4, async ({ mirror, upstream, fill }) => {
      await fill();
      const bytes = randomBytes(10 * MiB);
      const digest = upstream.addBlob(bytes);
      upstream.byteStreams = true;
      upstream.chunkSize = 256 * 1024;
      // The block holding byte 99 leaves memory long before the blob verifies.
      const ranged = await mirror.getBlob(NS, REPO, digest, {
        body: true,
        range: { first: 0, last: 99 },
      });
      assertEquals(await readAll(ranged.body!), bytes.slice(0, 100));
      assertEquals(upstream.count("blob", "GET"), 1);
    }),
});

Deno.test({
  name: "store full: a reader that stops reading is cut off; the others of the pass-through finish",
  ignore: !isRoot,
  fn: () =>
    withFullableMirror(4, async ({ mirror, upstream, fill, logs }) => {
      await fill();
      const bytes = randomBytes(12 * MiB);
      const digest = upstream.addBlob(bytes);
      upstream.byteStreams = true;
      upstream.chunkSize = 256 * 1024;
      const stalled = (await mirror.getBlob(NS, REPO, digest, { body: true })).body!
        .getReader();
      const reading = (await mirror.getBlob(NS, REPO, digest, { body: true })).body!;
      await stalled.read(); // then nothing more: a client that stopped reading
      const started = performance.now();
      assertEquals(digestOf(await readAll(reading)), digest, "the reading client gets it all");
      const waited = performance.now() - started;
      assert(waited >= 250, `cut off after ${waited.toFixed(0)} ms, not before the limit`);
      const error = await readRest(stalled).then(() => null, (e) => e);
      assert(error instanceof RegistryError, `the stalled client's stream fails: ${error}`);
      assertEquals(error.code, "UNAVAILABLE");
      assertMatch(logs.join("\n"), /1 client\(s\) read nothing for 0.3 s; cut off/);
      assertEquals(upstream.count("blob", "GET"), 1);
    }, { stalledReaderMs: 300 }),
});
