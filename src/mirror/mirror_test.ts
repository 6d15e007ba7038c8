/**
 * The cache's decisions against an in-process fake upstream (edge cases a real registry will
 * not produce on demand: lying, slow, down, rate-limited). tests/e2e proves the same with the
 * real docker-registry.
 */
import { assert, assertEquals, assertRejects } from "../../tests/support/assert.ts";
import { UpstreamRegistry } from "../config/upstreams.ts";
import { concatBytes } from "../runtime/bytes.ts";
import { digestOf } from "../oci/digest.ts";
import { RegistryError } from "../oci/errors.ts";
import { DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST } from "../oci/media_types.ts";
import { blobKey, manifestKey, tagKey } from "../storage/layout.ts";
import { FilesystemStorage } from "../storage/filesystem.ts";
import { Mirror } from "./mirror.ts";
import { IN_PLACE_STREAMING, processStreaming, type Streaming } from "../runtime/streaming.ts";
import { FakeUpstream, randomBytes, readAll, readRest } from "../../tests/support/fake_upstream.ts";

async function withMirror(
  fn: (
    mirror: Mirror,
    upstream: FakeUpstream,
    storage: FilesystemStorage,
    clock: { now: number },
  ) => Promise<void>,
  manifestInvalidation = "1h",
) {
  const root = await Deno.makeTempDir({ prefix: "mirror-test-" });
  const storage = new FilesystemStorage(root);
  const upstream = new FakeUpstream();
  const clock = { now: 1_000_000 };
  const upstreams = new UpstreamRegistry([{
    namespace: "registry.test",
    host: "127.0.0.1:1",
    tls: false,
    acceptInvalidCerts: false,
    manifestInvalidationMs: manifestInvalidation === "1h" ? 3_600_000 : 0,
    blobInvalidationMs: 30 * 86_400_000,
    configured: true,
  }]);
  const logs: string[] = [];
  const mirror = new Mirror({
    storage,
    upstream,
    upstreams,
    spoolDir: storage.tempDir,
    log: (line) => logs.push(line),
    now: () => clock.now,
    // What serving uses: libcrypto hashing off the JavaScript thread, when it loads.
    streaming: processStreaming(),
  });
  try {
    await fn(mirror, upstream, storage, clock);
  } finally {
    await mirror.settled();
    await storage.close();
    await Deno.remove(root, { recursive: true });
  }
}

const NS = "registry.test";
const REPO = "library/app";
const image = (layer: string) => ({
  schemaVersion: 2,
  mediaType: OCI_MANIFEST,
  config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: layer, size: 2 },
  layers: [],
});

Deno.test("a cached tag is served without asking upstream until it expires", async () => {
  await withMirror(async (mirror, upstream, _storage, clock) => {
    const digest = upstream.addManifest("1", image("sha256:" + "a".repeat(64)));
    const first = await mirror.getManifest(NS, REPO, "1", []);
    assertEquals(first.digest, digest);
    assertEquals(first.mediaType, OCI_MANIFEST);
    clock.now += 59 * 60_000;
    await mirror.getManifest(NS, REPO, "1", []);
    assertEquals(upstream.calls.map((c) => c.method), ["GET"]);

    // Expired: revalidated with HEAD only, since the digest did not change.
    clock.now += 2 * 60_000;
    await mirror.getManifest(NS, REPO, "1", []);
    assertEquals(upstream.calls.map((c) => c.method), ["GET", "HEAD"]);
    // Confirmation refreshed the link: no new HEAD right after.
    await mirror.getManifest(NS, REPO, "1", []);
    assertEquals(upstream.calls.length, 2);
  });
});

Deno.test("hot manifests and tag links are served from memory, without storage", async () => {
  await withMirror(async (mirror, upstream, storage) => {
    const digest = upstream.addManifest("1", image("sha256:" + "a".repeat(64)));
    await mirror.getManifest(NS, REPO, "1", []);
    await storage.delete(manifestKey(digest));
    await storage.delete(tagKey(NS, REPO, "1"));
    assertEquals((await mirror.getManifest(NS, REPO, "1", [])).digest, digest);
    assertEquals((await mirror.getManifest(NS, REPO, digest, [])).digest, digest);
    assertEquals(upstream.calls.length, 1);
  });
});

Deno.test("a tag moved upstream is picked up after expiry, not before", async () => {
  await withMirror(async (mirror, upstream, _storage, clock) => {
    const old = upstream.addManifest("1", image("sha256:" + "a".repeat(64)));
    assertEquals((await mirror.getManifest(NS, REPO, "1", [])).digest, old);
    const moved = upstream.addManifest("1", image("sha256:" + "b".repeat(64)));
    clock.now += 30 * 60_000;
    assertEquals((await mirror.getManifest(NS, REPO, "1", [])).digest, old);
    clock.now += 31 * 60_000;
    assertEquals((await mirror.getManifest(NS, REPO, "1", [])).digest, moved);
    assertEquals(upstream.calls.map((c) => c.method), ["GET", "HEAD", "GET"]);
  });
});

Deno.test("stale tags, digests and blobs are served when upstream is down or rate-limits", async () => {
  for (
    const failure of [
      new RegistryError("UNAVAILABLE", "connection refused"),
      new RegistryError("TOOMANYREQUESTS", "slow down"),
      new RegistryError("UPSTREAM_ERROR", "500"),
    ]
  ) {
    await withMirror(async (mirror, upstream, _storage, clock) => {
      const blob = upstream.addBlob(randomBytes(1000));
      const digest = upstream.addManifest("1", image(blob));
      await mirror.getManifest(NS, REPO, "1", []);
      await readAll((await mirror.getBlob(NS, REPO, blob, { body: true })).body!);
      upstream.failure = failure;
      clock.now += 2 * 3_600_000;
      assertEquals((await mirror.getManifest(NS, REPO, "1", [])).digest, digest);
      assertEquals((await mirror.getManifest(NS, REPO, digest, [])).digest, digest);
      const cached = await mirror.getBlob(NS, REPO, blob, { body: true });
      assertEquals(digestOf(await readAll(cached.body!)), blob);
      // Never cached: the upstream's failure is the answer.
      const error = await assertRejects(() => mirror.getManifest(NS, REPO, "2", []), RegistryError);
      assertEquals(error.code, failure.code);
    });
  }
});

Deno.test("while upstream quota is low, cached tags and blobs are served without asking it", async () => {
  await withMirror(async (mirror, upstream, _storage, clock) => {
    const blob = upstream.addBlob(randomBytes(1000));
    const digest = upstream.addManifest("1", image(blob));
    await mirror.getManifest(NS, REPO, "1", []);
    await readAll((await mirror.getBlob(NS, REPO, blob, { body: true })).body!);
    const before = upstream.calls.length;
    upstream.quotaIsLow = true;
    clock.now += 2 * 3_600_000; // the tag is due for revalidation
    assertEquals((await mirror.getManifest(NS, REPO, "1", [])).digest, digest);
    clock.now += 60 * 86_400_000; // and the blob for confirmation
    const cached = await mirror.getBlob(NS, REPO, blob, { body: true });
    assertEquals(digestOf(await readAll(cached.body!)), blob);
    assertEquals(upstream.calls.length, before, "no HEAD spent on what is cached");
    // What is not cached still goes upstream: that is what the quota is kept for.
    upstream.addManifest("2", image(blob));
    await mirror.getManifest(NS, REPO, "2", []);
    assertEquals(upstream.calls.length, before + 1);
    upstream.quotaIsLow = false;
    await mirror.getManifest(NS, REPO, "1", []);
    assertEquals(upstream.count("manifest", "HEAD"), 1, "revalidated once the quota is back");
  });
});

Deno.test("a download cut mid-way resumes with a Range request from its block, not from byte 0", async () => {
  for (const byteStreams of [false, true]) {
    await withMirror(async (mirror, upstream, storage) => {
      upstream.byteStreams = byteStreams;
      const bytes = randomBytes(5 * 1024 * 1024 + 17);
      const digest = upstream.addBlob(bytes);
      upstream.breakAfter = 2.5 * 1024 * 1024; // in the third 1 MiB block
      const blob = await mirror.getBlob(NS, REPO, digest, { body: true });
      assertEquals(digestOf(await readAll(blob.body!)), digest, "the client gets every byte");
      assertEquals(upstream.ranges, ["", "bytes=2097152-"]);
      await mirror.settled();
      assertEquals(
        (await storage.stat(blobKey(digest)))?.size,
        bytes.byteLength,
        "and it is cached",
      );
    });
  }
});

Deno.test("a cut download whose upstream ignores Range fails cleanly: nothing stored", async () => {
  await withMirror(async (mirror, upstream, storage) => {
    const bytes = randomBytes(3 * 1024 * 1024);
    const digest = upstream.addBlob(bytes);
    upstream.breakAfter = 1.5 * 1024 * 1024;
    upstream.honoursRange = false; // answers the Range request with the whole blob (200)
    const blob = await mirror.getBlob(NS, REPO, digest, { body: true });
    await assertRejects(() => readAll(blob.body!));
    await mirror.settled();
    assertEquals(await storage.stat(blobKey(digest)), null);
    assertEquals(upstream.ranges, ["", "bytes=1048576-"]);
  });
});

Deno.test("a manifest whose bytes do not match the digest asked for is refused and not stored", async () => {
  await withMirror(async (mirror, upstream, storage) => {
    const digest = upstream.addManifest("1", image("sha256:" + "a".repeat(64)));
    const other = upstream.addManifest("2", image("sha256:" + "b".repeat(64)));
    upstream.manifests.set(digest, upstream.manifests.get(other)!); // lies about digest
    const error = await assertRejects(
      () => mirror.getManifest(NS, REPO, digest, []),
      RegistryError,
    );
    assertEquals(error.code, "UPSTREAM_ERROR");
    assertEquals(await storage.stat(manifestKey(digest)), null);
  });
});

Deno.test("20 concurrent cold reads of one blob make ONE upstream GET and all get the bytes", async () => {
  await withMirror(async (mirror, upstream, storage) => {
    const bytes = randomBytes(4 * 1024 * 1024 + 123);
    const digest = upstream.addBlob(bytes);
    upstream.chunkDelayMs = 1;
    const bodies = await Promise.all(
      Array.from({ length: 20 }, () => mirror.getBlob(NS, REPO, digest, { body: true })),
    );
    const results = await Promise.all(bodies.map((b) => readAll(b.body!)));
    for (const result of results) assertEquals(digestOf(result), digest);
    assertEquals(upstream.count("blob", "GET"), 1);
    await mirror.settled();
    assertEquals((await storage.stat(blobKey(digest)))?.size, bytes.byteLength);
    // Now cached: no more upstream traffic.
    await readAll((await mirror.getBlob(NS, REPO, digest, { body: true })).body!);
    assertEquals(upstream.count("blob"), 1);
  });
});

Deno.test("a warm whole-blob GET costs one storage read and no stat (one S3 request, not two)", async () => {
  await withMirror(async (mirror, upstream, storage) => {
    const digest = upstream.addBlob(randomBytes(10_000));
    await readAll((await mirror.getBlob(NS, REPO, digest, { body: true })).body!);
    await mirror.settled();
    const calls: string[] = [];
    const stat = storage.stat.bind(storage);
    const read = storage.read.bind(storage);
    storage.stat = (key) => (calls.push("stat"), stat(key));
    storage.read = (key, range) => (calls.push("read"), read(key, range));
    const warm = await mirror.getBlob(NS, REPO, digest, { body: true });
    assertEquals(digestOf(await readAll(warm.body!)), digest);
    assertEquals(calls, ["read"]);
    calls.length = 0;
    const ranged = await mirror.getBlob(NS, REPO, digest, {
      body: true,
      range: { first: 0, last: 9 },
    });
    assertEquals((await readAll(ranged.body!)).byteLength, 10);
    assertEquals(calls, ["stat", "read"], "a range needs the size first");
  });
});

Deno.test("storage that says yes to stat and no to read cannot make the mirror loop", async () => {
  await withMirror(async (mirror, upstream, storage) => {
    const bytes = randomBytes(10_000);
    const digest = upstream.addBlob(bytes);
    storage.stat = () => Promise.resolve({ size: bytes.byteLength, modified: new Date() });
    storage.read = () => Promise.resolve(null);
    const blob = await mirror.getBlob(NS, REPO, digest, { body: true });
    assertEquals(digestOf(await readAll(blob.body!)), digest);
    assertEquals(upstream.count("blob", "GET"), 1);
  });
});

for (const byteStreams of [false, true]) {
  Deno.test(`readers stream while a slow download is still running (${byteStreams ? "BYOB" : "default"} body)`, async () => {
    await withMirror(async (mirror, upstream) => {
      const bytes = randomBytes(2 * 1024 * 1024);
      const digest = upstream.addBlob(bytes);
      upstream.byteStreams = byteStreams;
      upstream.chunkSize = 64 * 1024;
      upstream.chunkDelayMs = 20;
      const blob = await mirror.getBlob(NS, REPO, digest, { body: true });
      const reader = blob.body!.getReader();
      const first = await reader.read();
      assert(!first.done && first.value.byteLength > 0);
      // A slow upstream fills a 1 MiB block in about 330 ms here; the reader is not made to
      // wait for the whole block.
      assert(
        first.value.byteLength < 1024 * 1024,
        `first read was ${first.value.byteLength} bytes`,
      );
      assertEquals(first.value, bytes.subarray(0, first.value.byteLength));
      assertEquals(mirror.activeDownloads, 1, "first bytes arrived before the download ended");
      const rest = await readRest(reader);
      assertEquals(first.value.byteLength + rest.byteLength, bytes.byteLength);
      assertEquals(rest, bytes.subarray(first.value.byteLength));
    });
  });
}

Deno.test("readers far behind the download read the spool; readers at the head the blocks in memory", async () => {
  await withMirror(async (mirror, upstream) => {
    const bytes = randomBytes(12 * 1024 * 1024 + 7);
    const digest = upstream.addBlob(bytes);
    upstream.byteStreams = true;
    upstream.chunkSize = 256 * 1024;
    const slow = await mirror.getBlob(NS, REPO, digest, { body: true });
    const fast = await mirror.getBlob(NS, REPO, digest, { body: true });
    const slowReader = slow.body!.getReader();
    const first = await slowReader.read(); // then falls far behind
    const fastBytes = await readAll(fast.body!);
    assertEquals(digestOf(fastBytes), digest);
    const rest = await readRest(slowReader);
    const slowBytes = new Uint8Array(first.value!.byteLength + rest.byteLength);
    slowBytes.set(first.value!);
    slowBytes.set(rest, first.value!.byteLength);
    assertEquals(digestOf(slowBytes), digest);
    assertEquals(upstream.count("blob", "GET"), 1);
  });
});

Deno.test("a GET or HEAD while a download is still publishing follows the download, not storage", async () => {
  await withMirror(async (mirror, upstream, storage) => {
    const bytes = randomBytes(300_000);
    const digest = upstream.addBlob(bytes);
    // A store whose writes are not atomic (s3rver) shows a half-written object meanwhile.
    const publishing = Promise.withResolvers<void>();
    const release = Promise.withResolvers<void>();
    const publish = storage.publishFile.bind(storage);
    storage.publishFile = async (...args) => {
      publishing.resolve();
      await release.promise;
      return await publish(...args);
    };
    let reads = 0;
    const read = storage.read.bind(storage);
    storage.read = (...args) => {
      reads++;
      return read(...args);
    };
    const first = await mirror.getBlob(NS, REPO, digest, { body: true });
    assertEquals(digestOf(await readAll(first.body!)), digest);
    await publishing.promise;
    // The first GET (of a blob no manifest named for REPO) only asked storage whether it exists.
    assertEquals(reads, 0, "the first GET read nothing from storage");
    const second = await mirror.getBlob(NS, REPO, digest, { body: true });
    assertEquals(reads, 0, "the second GET did not ask storage");
    let stats = 0;
    const stat = storage.stat.bind(storage);
    storage.stat = (...args) => {
      stats++;
      return stat(...args);
    };
    const head = await mirror.getBlob(NS, REPO, digest, { body: false });
    assertEquals(head.size, bytes.byteLength);
    assertEquals(stats, 0, "nor did a HEAD");
    assertEquals(digestOf(await readAll(second.body!)), digest);
    release.resolve();
    await mirror.settled();
    const third = await mirror.getBlob(NS, REPO, digest, { body: true });
    assertEquals(digestOf(await readAll(third.body!)), digest);
    assertEquals(reads, 1, "once published, storage serves it");
    assertEquals(upstream.count("blob", "GET"), 1);
  });
});

Deno.test("a lying blob upstream: readers are cut off, nothing is stored, a later honest fetch heals", async () => {
  await withMirror(async (mirror, upstream, storage) => {
    const bytes = randomBytes(300_000);
    const digest = upstream.addBlob(bytes);
    const lie = bytes.slice();
    lie[1000] ^= 0xff;
    upstream.lie = lie;
    const blob = await mirror.getBlob(NS, REPO, digest, { body: true });
    const error = await assertRejects(() => readAll(blob.body!));
    assert(error.message.includes("not cached") || error.message.includes("digest"), error.message);
    await mirror.settled();
    assertEquals(await storage.stat(blobKey(digest)), null);
    assertEquals(
      [...Deno.readDirSync(storage.tempDir)].filter((e) => e.name.startsWith("spool")),
      [],
    );

    upstream.lie = undefined;
    const healed = await mirror.getBlob(NS, REPO, digest, { body: true });
    assertEquals(digestOf(await readAll(healed.body!)), digest);
    assertEquals(upstream.count("blob", "GET"), 2);
  });
});

Deno.test("a short upstream body fails the download and leaves nothing behind", async () => {
  await withMirror(async (mirror, upstream, storage) => {
    const bytes = randomBytes(100_000);
    const digest = upstream.addBlob(bytes);
    upstream.lie = bytes.slice(0, 50_000);
    const blob = await mirror.getBlob(NS, REPO, digest, { body: true });
    await assertRejects(() => readAll(blob.body!));
    assertEquals(await storage.stat(blobKey(digest)), null);
  });
});

Deno.test("past blob_invalidation_time a cached blob is confirmed upstream with one HEAD", async () => {
  await withMirror(async (mirror, upstream, _storage, clock) => {
    const bytes = randomBytes(10_000);
    const digest = upstream.addBlob(bytes);
    clock.now = Date.now();
    await readAll((await mirror.getBlob(NS, REPO, digest, { body: true })).body!);
    await mirror.settled();
    await readAll((await mirror.getBlob(NS, REPO, digest, { body: true })).body!);
    assertEquals(upstream.calls.length, 1, "fresh: served without asking");

    clock.now += 31 * 86_400_000; // past the 30d blob_invalidation_time
    const old = await mirror.getBlob(NS, REPO, digest, { body: true });
    assertEquals(digestOf(await readAll(old.body!)), digest);
    assertEquals(upstream.calls.map((c) => c.method), ["GET", "HEAD"]);
    await readAll((await mirror.getBlob(NS, REPO, digest, { body: true })).body!);
    assertEquals(upstream.calls.length, 2, "the confirmation is remembered");

    clock.now += 31 * 86_400_000;
    upstream.failure = new RegistryError("UNAVAILABLE", "down");
    const stale = await mirror.getBlob(NS, REPO, digest, { body: true });
    assertEquals(digestOf(await readAll(stale.body!)), digest, "upstream down: still served");

    upstream.failure = undefined;
    upstream.blobs.delete(digest);
    const error = await assertRejects(
      () => mirror.getBlob(NS, REPO, digest, { body: true }),
      RegistryError,
    );
    assertEquals(error.code, "BLOB_UNKNOWN", "upstream no longer has it for this repository");
  });
});

Deno.test("ranges of a cold blob are served from the download", async () => {
  await withMirror(async (mirror, upstream) => {
    const bytes = randomBytes(1_000_000);
    const digest = upstream.addBlob(bytes);
    const blob = await mirror.getBlob(NS, REPO, digest, {
      body: true,
      range: { first: 999_000 },
    });
    assertEquals(await readAll(blob.body!), bytes.slice(999_000));
  });
});

Deno.test("a cold range of a lying upstream's blob is cut short, never completed", async () => {
  await withMirror(async (mirror, upstream, storage) => {
    const bytes = randomBytes(300_000);
    const digest = upstream.addBlob(bytes);
    const lie = bytes.slice();
    lie[10] ^= 0xff;
    upstream.lie = lie;
    const blob = await mirror.getBlob(NS, REPO, digest, {
      body: true,
      range: { first: 0, last: 99 },
    });
    const reader = blob.body!.getReader();
    const got: Uint8Array[] = [];
    const error = await assertRejects(async () => {
      for (let r = await reader.read(); !r.done; r = await reader.read()) got.push(r.value);
    });
    assert(error.message.includes("not cached"), error.message);
    const delivered = got.reduce((n, chunk) => n + chunk.byteLength, 0);
    assert(delivered < 100, `${delivered} of the range's 100 bytes delivered`);
    await mirror.settled();
    assertEquals(await storage.stat(blobKey(digest)), null);
  });
});

Deno.test("a cold range streams at once; only its last byte waits for the whole blob", async () => {
  await withMirror(async (mirror, upstream) => {
    const bytes = randomBytes(1_000_000);
    const digest = upstream.addBlob(bytes);
    upstream.chunkSize = 64 * 1024;
    upstream.chunkDelayMs = 10;
    const started = performance.now();
    const blob = await mirror.getBlob(NS, REPO, digest, {
      body: true,
      range: { first: 0, last: 199_999 },
    });
    const reader = blob.body!.getReader();
    const first = await reader.read();
    assert(!first.done && first.value.byteLength > 0);
    assert(performance.now() - started < 100, "first bytes long before the blob's end");
    const chunks = [first.value];
    let total = first.value.byteLength;
    let lastByteAt = 0;
    for (let r = await reader.read(); !r.done; r = await reader.read()) {
      chunks.push(r.value);
      total += r.value.byteLength;
      if (total === 200_000) lastByteAt = performance.now() - started;
    }
    // 16 chunks 10 ms apart: the whole blob takes at least 150 ms, the range alone 40 ms.
    assert(lastByteAt >= 150, `the range's last byte came after ${lastByteAt} ms, unverified`);
    assertEquals(concatBytes(chunks, total), bytes.slice(0, 200_000));
  });
});

Deno.test("a client that cannot take an index gets the linux/amd64 manifest", async () => {
  await withMirror(async (mirror, upstream) => {
    const amd64 = upstream.addManifest("amd64", {
      ...image("sha256:" + "a".repeat(64)),
      mediaType: DOCKER_MANIFEST,
    });
    const arm64 = upstream.addManifest("arm64", {
      ...image("sha256:" + "b".repeat(64)),
      mediaType: DOCKER_MANIFEST,
    });
    const index = upstream.addManifest("1", {
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [
        {
          mediaType: DOCKER_MANIFEST,
          digest: arm64,
          size: 1,
          platform: { os: "linux", architecture: "arm64" },
        },
        {
          mediaType: DOCKER_MANIFEST,
          digest: amd64,
          size: 1,
          platform: { os: "linux", architecture: "amd64" },
        },
      ],
    });
    assertEquals(
      (await mirror.getManifest(NS, REPO, "1", [OCI_INDEX, DOCKER_MANIFEST])).digest,
      index,
    );
    assertEquals((await mirror.getManifest(NS, REPO, "1", [])).digest, index);
    assertEquals((await mirror.getManifest(NS, REPO, "1", [DOCKER_MANIFEST])).digest, amd64);
    const error = await assertRejects(
      () => mirror.getManifest(NS, REPO, amd64, [OCI_MANIFEST]),
      RegistryError,
    );
    assertEquals(error.code, "MANIFEST_UNKNOWN");
  });
});

Deno.test("concurrent misses of one tag make one upstream manifest request", async () => {
  await withMirror(async (mirror, upstream) => {
    upstream.addManifest("1", image("sha256:" + "a".repeat(64)));
    await Promise.all(Array.from({ length: 10 }, () => mirror.getManifest(NS, REPO, "1", [])));
    assertEquals(upstream.count("manifest"), 1);
  });
});

Deno.test("referrers: upstream's API (cached, served stale), else the fallback tag", async () => {
  const subject = "sha256:" + "5".repeat(64);
  const referrer = { mediaType: OCI_MANIFEST, digest: "sha256:" + "6".repeat(64), size: 9 };
  // Without a referrers API: the index under the tag sha256-<hex>, fetched as a manifest.
  await withMirror(async (mirror, upstream) => {
    assertEquals(await mirror.listReferrers(NS, REPO, subject), []);
    upstream.addManifest(`sha256-${"5".repeat(64)}`, {
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [{ ...referrer, artifactType: "application/x.sig" }],
    });
    assertEquals((await mirror.listReferrers(NS, REPO, subject)).map((d) => d.digest), [
      referrer.digest,
    ]);
    assertEquals(await mirror.listReferrers(NS, REPO, subject, "application/x.other"), []);
  });
  // With one: its answer is stored and served when upstream is down.
  const root = await Deno.makeTempDir({ prefix: "mirror-test-" });
  const storage = new FilesystemStorage(root);
  const upstream = new FakeUpstream();
  let down = false;
  const withApi = Object.assign(upstream, {
    referrers: () =>
      down
        ? Promise.reject(new RegistryError("UNAVAILABLE", "down"))
        : Promise.resolve(Response.json({ schemaVersion: 2, manifests: [referrer] })),
  });
  const upstreams = new UpstreamRegistry([{
    namespace: NS,
    host: "127.0.0.1:1",
    tls: false,
    acceptInvalidCerts: false,
    manifestInvalidationMs: 3_600_000,
    blobInvalidationMs: 86_400_000,
    configured: true,
  }]);
  const mirror = new Mirror({
    storage,
    upstream: withApi,
    upstreams,
    spoolDir: storage.tempDir,
    log: () => {},
  });
  try {
    assertEquals(await mirror.listReferrers(NS, REPO, subject), [referrer]);
    down = true;
    assertEquals(await mirror.listReferrers(NS, REPO, subject), [referrer], "served stale");
    await assertRejects(
      () => mirror.listReferrers(NS, REPO, "sha256:" + "7".repeat(64)),
      RegistryError,
    );
  } finally {
    await storage.close();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("a whole tag list is stored and served stale when upstream is down", async () => {
  await withMirror(async (mirror, upstream) => {
    const fresh = await mirror.listTags(NS, REPO, {});
    assertEquals(fresh.items, ["1", "2", "3"]);
    upstream.failure = new RegistryError("UNAVAILABLE", "upstream down");
    const stale = await mirror.listTags(NS, REPO, {});
    assertEquals(stale.items, ["1", "2", "3"]);
    // A page is not stored: with upstream down it fails as before.
    await assertRejects(() => mirror.listTags(NS, REPO, { n: 1 }), RegistryError);
  });
});

Deno.test("downloads and stored reads go through the streaming hooks given: every byte, one hasher a blob", async () => {
  const root = await Deno.makeTempDir({ prefix: "mirror-test-" });
  const told: number[] = [];
  const hashers: string[] = [];
  const streaming: Streaming = {
    streamed: (bytes) => told.push(bytes),
    hasher: (algorithm) => {
      hashers.push(algorithm);
      return IN_PLACE_STREAMING.hasher(algorithm);
    },
  };
  const storage = new FilesystemStorage(root, { streaming });
  const upstream = new FakeUpstream();
  const mirror = new Mirror({
    storage,
    upstream,
    upstreams: new UpstreamRegistry([]),
    spoolDir: storage.tempDir,
    streaming,
  });
  try {
    const bytes = randomBytes(3 << 20);
    const digest = upstream.addBlob(bytes);
    const sum = () => told.reduce((a, b) => a + b, 0);
    // Cold: the download is told of what it received, and hashes with the hooks' hasher.
    const cold = await mirror.getBlob(NS, REPO, digest, { body: true });
    assertEquals(await readAll(cold.body!), bytes);
    await mirror.settled();
    assertEquals([sum(), hashers], [bytes.length, ["sha256"]]);
    // Warm: the store's file reads are told too.
    told.length = 0;
    const warm = await mirror.getBlob(NS, REPO, digest, { body: true });
    assertEquals(await readAll(warm.body!), bytes);
    assertEquals([sum(), hashers.length], [bytes.length, 1]);
  } finally {
    await mirror.settled();
    await storage.close();
    await Deno.remove(root, { recursive: true });
  }
});
