/**
 * The storage contract: one suite, run unchanged against every back-end (the way distribution's
 * driver test suite keeps its drivers honest).
 *
 *   storageContract("filesystem", async () => ({ storage, rawKeys, spoolFile, dispose }));
 *
 * Every case gets a fresh, empty storage from `makeStorage` and disposes of it afterwards, so
 * the cases are independent and Deno's resource/op sanitizers check each one.
 */
import { RegistryError } from "../src/oci/errors.ts";
import { digestOf, Hasher } from "../src/oci/digest.ts";
import { blobKey, manifestKey, tagKey, type TagLink } from "../src/storage/layout.ts";
import type { Storage } from "../src/storage/storage.ts";
import { assert, assertEquals, assertRejects } from "./support/assert.ts";
import { pathExists } from "./support/tools.ts";

export interface StorageFixture {
  storage: Storage;
  /**
   * Everything the back-end stored, as it stored it (temporary or in-progress entries
   * included, its own bookkeeping such as lock files excluded): a failed write must leave
   * nothing behind.
   */
  rawKeys(): Promise<string[]>;
  /** Creates a local file with `bytes` where the cache would spool a download; returns its path. */
  spoolFile(bytes: Uint8Array): Promise<string>;
  /** Closes the storage and removes what the fixture created. */
  dispose(): Promise<void>;
  /**
   * Makes the store refuse writes for lack of space (a filled disk, a quota); resolves to a
   * function that gives the space back. Back-ends that cannot do this skip the cases needing it.
   */
  fill?(): Promise<() => Promise<void>>;
}

export interface ContractHooks {
  /** Runs once before the cases (start a server...). */
  beforeAll?(): Promise<void>;
  /** Runs once after the cases, even when they failed. */
  afterAll?(): Promise<void>;
  /** The fixtures implement `fill` (else the cases that need it are ignored). */
  canFill?: boolean;
}

/** Cases that need `StorageFixture.fill`. */
const FILL_CASES = new Set(["a full store refuses writes as INSUFFICIENT_STORAGE and heals"]);

const MiB = 1 << 20;
const encoder = new TextEncoder();

/** Registers one Deno test named `storage contract: ${name}` with a step per contract case. */
export function storageContract(
  name: string,
  makeStorage: () => Promise<StorageFixture>,
  hooks: ContractHooks = {},
): void {
  Deno.test(`storage contract: ${name}`, async (t) => {
    await hooks.beforeAll?.();
    try {
      for (const [caseName, fn] of Object.entries(CASES)) {
        const ignore = FILL_CASES.has(caseName) && !hooks.canFill;
        await t.step({
          name: caseName,
          ignore,
          fn: async () => {
            const fixture = await makeStorage();
            try {
              await fn(fixture);
            } finally {
              await fixture.dispose();
            }
          },
        });
      }
    } finally {
      await hooks.afterAll?.();
    }
  });
}

type Case = (fixture: StorageFixture) => Promise<void>;

const CASES: Record<string, Case> = {
  "absent keys are null, deleting them is fine": async ({ storage }) => {
    const key = blobKey(digestOf(encoder.encode("never written")));
    assertEquals(await storage.stat(key), null);
    assertEquals(await storage.read(key), null);
    assertEquals(await storage.read(key, { start: 0, end: 0 }), null);
    assertEquals(await storage.readBytes(key), null);
    await storage.delete(key);
    assertEquals(await collect(storage.list("blobs/")), []);
    assertEquals(await collect(storage.list("")), []);
  },

  "a blob written with its digest reads back whole": async ({ storage }) => {
    const bytes = pattern(300_000, 1);
    const digest = digestOf(bytes);
    const key = blobKey(digest);
    const before = Date.now();
    await storage.write(key, bytes, { digest, size: bytes.byteLength });
    const info = await storage.stat(key);
    assert(info, "stat after write");
    assertEquals(info.size, bytes.byteLength);
    assert(info.modified instanceof Date, "modified is a Date");
    // S3 keeps seconds only; allow for that and for clock granularity.
    assert(info.modified.getTime() >= before - 2_000, `modified ${info.modified.toISOString()}`);
    assert(
      info.modified.getTime() <= Date.now() + 2_000,
      `modified ${info.modified.toISOString()}`,
    );
    const object = await storage.read(key);
    assert(object, "read after write");
    assertEquals(object.size, bytes.byteLength);
    assertEquals(await bytesOf(object.body), bytes);
    assertEquals(await storage.readBytes(key), bytes);
  },

  "an empty object": async ({ storage }) => {
    const bytes = new Uint8Array(0);
    const key = blobKey(digestOf(bytes));
    await storage.write(key, bytes, { digest: digestOf(bytes), size: 0 });
    assertEquals((await storage.stat(key))?.size, 0);
    const object = await storage.read(key);
    assert(object);
    assertEquals(object.size, 0);
    assertEquals(await bytesOf(object.body), bytes);
    assertEquals(await storage.readBytes(key), bytes);
    await expectRangeInvalid(storage.read(key, { start: 0, end: 0 }), 0);
  },

  "a streamed write without digest reads back": async ({ storage }) => {
    const bytes = pattern(3 * MiB + 17, 2);
    const key = blobKey(digestOf(bytes));
    await storage.write(key, streamOf(bytes, 64 * 1024 + 3));
    assertEquals((await storage.stat(key))?.size, bytes.byteLength);
    assertEquals(await bytesOf((await storage.read(key))!.body), bytes);
  },

  "manifests and tag links by layout keys": async ({ storage }) => {
    const manifest = encoder.encode(JSON.stringify({ schemaVersion: 2, layers: [] }));
    const digest = digestOf(manifest);
    await storage.write(manifestKey(digest), manifest, { digest });
    const link: TagLink = {
      digest,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      size: manifest.byteLength,
      confirmedAt: 1_700_000_000_000,
    };
    const tag = tagKey("docker.io", "library/alpine", "3.19");
    await storage.write(tag, encoder.encode(JSON.stringify(link)));
    assertEquals(await storage.readBytes(manifestKey(digest)), manifest);
    const stored = await storage.readBytes(tag);
    assert(stored);
    assertEquals(JSON.parse(new TextDecoder().decode(stored)), link);
    // A tag moves: the last write wins.
    const moved = { ...link, digest: digestOf(encoder.encode("other")), confirmedAt: 1 };
    await storage.write(tag, encoder.encode(JSON.stringify(moved)));
    assertEquals(JSON.parse(new TextDecoder().decode((await storage.readBytes(tag))!)), moved);
  },

  "range reads: first, middle, last byte, clamped end, past the end": async ({ storage }) => {
    const bytes = pattern(1000, 3);
    const key = blobKey(digestOf(bytes));
    await storage.write(key, bytes);
    const slice = async (start: number, end: number) => {
      const object = await storage.read(key, { start, end });
      assert(object, `range ${start}-${end}`);
      assertEquals(object.size, 1000, "size is the whole object's");
      return await bytesOf(object.body);
    };
    assertEquals(await slice(0, 0), bytes.subarray(0, 1));
    assertEquals(await slice(100, 499), bytes.subarray(100, 500));
    assertEquals(await slice(999, 999), bytes.subarray(999));
    assertEquals(await slice(0, 999), bytes);
    assertEquals(await slice(990, 5000), bytes.subarray(990), "end past the size is clamped");
    await expectRangeInvalid(storage.read(key, { start: 1000, end: 1000 }), 1000);
    await expectRangeInvalid(storage.read(key, { start: 5000, end: 6000 }), 1000);
    await expectRangeInvalid(storage.read(key, { start: 10, end: 5 }), 1000);
  },

  "range reads of a multi-MiB object": async ({ storage }) => {
    const bytes = pattern(5 * MiB + 123, 4);
    const key = blobKey(digestOf(bytes));
    await storage.write(key, streamOf(bytes, MiB));
    const object = await storage.read(key, { start: MiB - 1, end: 4 * MiB + 1 });
    assert(object);
    assertEquals(await bytesOf(object.body), bytes.subarray(MiB - 1, 4 * MiB + 2));
    const tail = await storage.read(key, { start: bytes.byteLength - 1, end: bytes.byteLength });
    assertEquals(await bytesOf(tail!.body), bytes.subarray(bytes.byteLength - 1));
  },

  "a body can be cancelled half-way": async ({ storage }) => {
    const bytes = pattern(4 * MiB, 5);
    const key = blobKey(digestOf(bytes));
    await storage.write(key, bytes);
    const object = await storage.read(key);
    assert(object);
    const reader = object.body.getReader();
    const first = await reader.read();
    assert(!first.done && first.value.byteLength > 0);
    await reader.cancel();
    // A range body left unread is cancelled too (no leaked file or socket).
    const range = await storage.read(key, { start: 5, end: 10 });
    await range!.body.cancel();
  },

  "delete removes the object and its listing": async ({ storage }) => {
    const bytes = encoder.encode("to be deleted");
    const key = blobKey(digestOf(bytes));
    const tag = tagKey("registry.test", "team/app", "v1");
    await storage.write(key, bytes);
    await storage.write(tag, encoder.encode("{}"));
    await storage.delete(key);
    assertEquals(await storage.stat(key), null);
    assertEquals(await storage.read(key), null);
    assertEquals(await storage.readBytes(key), null);
    await storage.delete(key);
    await storage.delete(tag);
    assertEquals(await collect(storage.list("")), []);
    // The key can be written again after a delete (directories pruned or not).
    await storage.write(tag, encoder.encode("{}"));
    assertEquals(await storage.readBytes(tag), encoder.encode("{}"));
  },

  "list walks blobs, manifests and tags by prefix": async ({ storage }) => {
    const blobs = ["a", "b", "c"].map((s) => blobKey(digestOf(encoder.encode(s))));
    const manifests = ["m1", "m2"].map((s) => manifestKey(digestOf(encoder.encode(s))));
    const tags = [
      tagKey("docker.io", "library/alpine", "3.19"),
      tagKey("docker.io", "library/alpine", "latest"),
      tagKey("docker.io", "library/alpine-edge", "1"),
      tagKey("registry.test", "a/b/c", "v1.0_rc-1"),
    ];
    for (const key of [...blobs, ...manifests, ...tags]) {
      await storage.write(key, encoder.encode(key));
    }
    assertEquals(sorted(await collect(storage.list("blobs/"))), sorted(blobs));
    assertEquals(sorted(await collect(storage.list("manifests/"))), sorted(manifests));
    assertEquals(
      sorted(await collect(storage.list("repositories/docker.io/library/alpine/"))),
      sorted(tags.slice(0, 2)),
    );
    assertEquals(
      sorted(await collect(storage.list("repositories/docker.io/library/alpine/_tags/"))),
      sorted(tags.slice(0, 2)),
    );
    assertEquals(sorted(await collect(storage.list("repositories/"))), sorted(tags));
    assertEquals(
      sorted(await collect(storage.list(""))),
      sorted([...blobs, ...manifests, ...tags]),
    );
    assertEquals(await collect(storage.list("repositories/nowhere/")), []);
    // A prefix that ends inside a name matches like a string prefix.
    const sha = blobs[0].split("/").slice(0, 3).join("/") + "/";
    assert((await collect(storage.list(sha))).includes(blobs[0]));
  },

  "list pages through more than a thousand keys": async ({ storage }) => {
    const keys = Array.from({ length: 1_050 }, (_, i) => `repositories/r/many/_tags/t${i}`);
    await pool(keys, 25, (key) => storage.write(key, encoder.encode("x")));
    const listed = await collect(storage.list("repositories/r/many/"));
    assertEquals(listed.length, keys.length);
    assertEquals(sorted(listed), sorted(keys));
  },

  "a streaming write is invisible until complete": async ({ storage, rawKeys }) => {
    const total = 16 * MiB;
    const data = lazyStream(total, MiB, 6);
    const digest = await data.digest();
    const key = blobKey(digest);
    let release!: () => void;
    const gate = new Promise<void>((resolve) => release = resolve);
    let pulled = 0;
    const reachedGate = Promise.withResolvers<void>();
    const writing = storage.write(
      key,
      data.stream({
        onPull: async (offset) => {
          pulled = offset;
          if (offset === 12 * MiB) {
            reachedGate.resolve();
            await gate;
          }
        },
      }),
      { digest, size: total },
    );
    writing.catch(() => {}); // inspected below
    await reachedGate.promise;
    // Let the back-end push what it has (parts, file writes) before looking.
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert(pulled >= 12 * MiB);
    assertEquals(await storage.stat(key), null, "stat during write");
    assertEquals(await storage.read(key), null, "read during write");
    assertEquals(await storage.readBytes(key), null, "readBytes during write");
    assert(!(await collect(storage.list("blobs/"))).includes(key), "list during write");
    release();
    await writing;
    assertEquals((await storage.stat(key))?.size, total);
    assertEquals(await digestOfStream((await storage.read(key))!.body), digest);
    assertEquals(await rawKeys(), [key], "nothing else left behind");
  },

  "an overwrite in progress leaves the old object readable": async ({ storage }) => {
    const key = tagKey("docker.io", "library/busybox", "latest");
    const old = pattern(1000, 7);
    await storage.write(key, old);
    let release!: () => void;
    const gate = new Promise<void>((resolve) => release = resolve);
    const reachedGate = Promise.withResolvers<void>();
    const data = lazyStream(8 * MiB, MiB, 8);
    const writing = storage.write(
      key,
      data.stream({
        onPull: async (offset) => {
          if (offset === 6 * MiB) {
            reachedGate.resolve();
            await gate;
          }
        },
      }),
    );
    writing.catch(() => {});
    await reachedGate.promise;
    await new Promise((resolve) => setTimeout(resolve, 100));
    assertEquals((await storage.stat(key))?.size, 1000);
    assertEquals(await storage.readBytes(key), old);
    assertEquals(await bytesOf((await storage.read(key))!.body), old);
    release();
    await writing;
    assertEquals((await storage.stat(key))?.size, 8 * MiB);
  },

  "a digest mismatch is rejected and leaves nothing visible": async ({ storage, rawKeys }) => {
    const bytes = pattern(200_000, 9);
    const wrong = digestOf(encoder.encode("something else"));
    const key = blobKey(wrong);
    await expectCode(storage.write(key, bytes, { digest: wrong }), "DIGEST_INVALID");
    await expectCode(
      storage.write(key, streamOf(bytes, 10_000), { digest: wrong }),
      "DIGEST_INVALID",
    );
    // Big enough for a multipart upload on S3: its last part must never be completed.
    const big = lazyStream(12 * MiB + 5, MiB, 10);
    await expectCode(storage.write(key, big.stream(), { digest: wrong }), "DIGEST_INVALID");
    assertEquals(await storage.stat(key), null);
    assertEquals(await storage.read(key), null);
    assertEquals(await storage.readBytes(key), null);
    assertEquals(await collect(storage.list("")), []);
    assertEquals(await rawKeys(), [], "nothing left behind");
    // An existing object survives a failed overwrite.
    const good = pattern(1234, 11);
    const goodKey = blobKey(digestOf(good));
    await storage.write(goodKey, good);
    await expectCode(
      storage.write(goodKey, streamOf(pattern(1234, 12), 100), { digest: digestOf(good) }),
      "DIGEST_INVALID",
    );
    assertEquals(await storage.readBytes(goodKey), good);
    assertEquals(await rawKeys(), [goodKey]);
  },

  "a size mismatch is rejected and leaves nothing visible": async ({ storage, rawKeys }) => {
    const bytes = pattern(100_000, 13);
    const digest = digestOf(bytes);
    const key = blobKey(digest);
    await expectCode(storage.write(key, bytes, { digest, size: 99_999 }), "SIZE_INVALID");
    await expectCode(storage.write(key, bytes, { size: 100_001 }), "SIZE_INVALID");
    await expectCode(storage.write(key, streamOf(bytes, 7_000), { size: 50_000 }), "SIZE_INVALID");
    await expectCode(
      storage.write(key, streamOf(bytes, 7_000), { digest, size: 200_000 }),
      "SIZE_INVALID",
    );
    assertEquals(await storage.stat(key), null);
    assertEquals(await rawKeys(), [], "nothing left behind");
  },

  "a failing source stream publishes nothing and keeps its error": async ({ storage, rawKeys }) => {
    const key = blobKey(digestOf(encoder.encode("never complete")));
    let sent = 0;
    const failing = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent >= 7 * MiB) {
          controller.error(new RegistryError("UPSTREAM_ERROR", "upstream connection reset"));
          return;
        }
        sent += MiB;
        controller.enqueue(pattern(MiB, sent));
      },
    });
    // The source's own error comes through unchanged (it is not the storage's fault).
    await expectCode(storage.write(key, failing), "UPSTREAM_ERROR");
    assertEquals(await storage.stat(key), null);
    assertEquals(await rawKeys(), [], "nothing left behind");
  },

  "concurrent writers of the same digest both succeed": async ({ storage, rawKeys }) => {
    const data = lazyStream(12 * MiB + 77, MiB, 14);
    const digest = await data.digest();
    const key = blobKey(digest);
    const size = 12 * MiB + 77;
    await Promise.all([
      storage.write(key, data.stream(), { digest, size }),
      storage.write(key, data.stream(), { digest, size }),
      storage.write(key, data.stream(), { digest, size }),
    ]);
    assertEquals((await storage.stat(key))?.size, size);
    assertEquals(await digestOfStream((await storage.read(key))!.body), digest);
    assertEquals(await rawKeys(), [key]);
  },

  "publishFile publishes a spooled download": async ({ storage, spoolFile, rawKeys }) => {
    const bytes = pattern(6 * MiB + 1, 15);
    const digest = digestOf(bytes);
    const key = blobKey(digest);
    const path = await spoolFile(bytes);
    await storage.publishFile(key, path, { digest, size: bytes.byteLength });
    assertEquals((await storage.stat(key))?.size, bytes.byteLength);
    assertEquals(await bytesOf((await storage.read(key))!.body), bytes);
    assert(!(await pathExists(path)), "the spool file is consumed");
    // Without options (the caller verified while downloading).
    const small = encoder.encode("small blob");
    const smallKey = blobKey(digestOf(small));
    await storage.publishFile(smallKey, await spoolFile(small));
    assertEquals(await storage.readBytes(smallKey), small);
    assertEquals(sorted(await rawKeys()), sorted([key, smallKey]));
  },

  "move renames an object, bytes and all": async ({ storage, rawKeys }) => {
    const bytes = pattern(3 * MiB + 7, 21);
    await storage.write("uploads/x/0000000000000000", bytes);
    await storage.write("blobs/sha256/ab/old", encoder.encode("old"));
    await storage.move("uploads/x/0000000000000000", "blobs/sha256/ab/old");
    assertEquals(await bytesOf((await storage.read("blobs/sha256/ab/old"))!.body), bytes);
    assertEquals(await storage.stat("uploads/x/0000000000000000"), null);
    assertEquals(await rawKeys(), ["blobs/sha256/ab/old"]);
    await assertRejects(() => storage.move("uploads/x/none", "blobs/sha256/ab/new"));
  },

  "publishFile rejects a wrong digest or size": async ({ storage, spoolFile, rawKeys }) => {
    const bytes = pattern(100_000, 16);
    const wrong = digestOf(encoder.encode("not it"));
    const path = await spoolFile(bytes);
    await expectCode(
      storage.publishFile(blobKey(wrong), path, { digest: wrong }),
      "DIGEST_INVALID",
    );
    const digest = digestOf(bytes);
    await expectCode(
      storage.publishFile(blobKey(digest), path, { digest, size: 5 }),
      "SIZE_INVALID",
    );
    assertEquals(await storage.stat(blobKey(wrong)), null);
    assertEquals(await storage.stat(blobKey(digest)), null);
    // A rejected file stays where it was, for the caller to remove.
    assert(await pathExists(path), "the rejected spool file is left to the caller");
    await Deno.remove(path);
    assertEquals(await rawKeys(), [], "nothing left behind");
  },

  "a full store refuses writes as INSUFFICIENT_STORAGE and heals": async (fixture) => {
    const { storage, spoolFile, rawKeys } = fixture;
    const old = pattern(10_000, 30);
    const oldKey = blobKey(digestOf(old));
    await storage.write(oldKey, old);
    const bytes = pattern(2 * MiB, 31);
    const digest = digestOf(bytes);
    const key = blobKey(digest);
    const spool = await spoolFile(bytes);
    const before = sorted(await rawKeys());
    const give = await fixture.fill!();
    await expectCode(storage.write(key, bytes, { digest }), "INSUFFICIENT_STORAGE");
    await expectCode(storage.write(key, streamOf(bytes, 64 * 1024)), "INSUFFICIENT_STORAGE");
    await expectCode(
      storage.write(tagKey("registry.test", "a/b", "1"), encoder.encode("x".repeat(100_000))),
      "INSUFFICIENT_STORAGE",
    );
    assertEquals(await storage.stat(key), null);
    assertEquals(await storage.readBytes(oldKey), old, "what was stored is still served");
    assertEquals(sorted(await rawKeys()), before, "nothing partial left behind");
    await give();
    await storage.publishFile(key, spool, { size: bytes.byteLength });
    assertEquals(await bytesOf((await storage.read(key))!.body), bytes, "heals once space returns");
  },

  "unsafe keys are rejected": async ({ storage, spoolFile }) => {
    const bad = [
      "",
      "/etc/passwd",
      "../escape",
      "blobs/../../escape",
      "blobs/./x",
      "blobs//x",
      "blobs/x/",
      "blobs\\..\\x",
      "blobs/\0",
      "..",
    ];
    const path = await spoolFile(encoder.encode("payload"));
    for (const key of bad) {
      const label = JSON.stringify(key);
      await assertRejects(() => storage.stat(key), TypeError, undefined);
      await assertRejects(() => storage.read(key), TypeError);
      await assertRejects(() => storage.read(key, { start: 0, end: 1 }), TypeError);
      await assertRejects(() => storage.readBytes(key), TypeError);
      await assertRejects(() => storage.write(key, encoder.encode("x")), TypeError);
      await assertRejects(
        () => storage.write(key, streamOf(encoder.encode("x"), 1)),
        TypeError,
      );
      await assertRejects(() => storage.publishFile(key, path), TypeError);
      await assertRejects(() => storage.delete(key), TypeError);
      assert(await pathExists(path), `spool untouched by ${label}`);
    }
    for (const prefix of ["../", "/", "blobs/../../", "a//"]) {
      await assertRejects(() => collect(storage.list(prefix)), TypeError);
    }
  },

  "a 64 MiB streamed write stays streaming": async ({ storage }) => {
    const total = 64 * MiB;
    const data = lazyStream(total, MiB, 17);
    const digest = await data.digest();
    const key = blobKey(digest);
    const before = Deno.memoryUsage();
    await storage.write(key, data.stream(), { digest, size: total });
    const object = await storage.read(key);
    assert(object);
    assertEquals(object.size, total);
    assertEquals(await digestOfStream(object.body), digest);
    const after = Deno.memoryUsage();
    // Informational only (GC timing makes a hard bound flaky); the code paths never collect
    // a whole body.
    console.log(
      `    64 MiB write+read: rss ${mb(after.rss - before.rss)}, heap ${
        mb(after.heapUsed - before.heapUsed)
      }, external ${mb(after.external - before.external)}`,
    );
  },
};

// ---------------------------------------------------------------------------------------------

async function expectCode(promise: Promise<unknown>, code: string): Promise<RegistryError> {
  const error = await assertRejects(() => promise, RegistryError);
  assertEquals(error.code, code, error.message);
  return error;
}

async function expectRangeInvalid(promise: Promise<unknown>, size: number): Promise<void> {
  const error = await expectCode(promise, "RANGE_INVALID");
  const header = Object.entries(error.headers).find(([name]) =>
    name.toLowerCase() === "content-range"
  );
  assertEquals(header?.[1], `bytes */${size}`);
}

/** Deterministic pseudo-random bytes (xorshift32), different for every seed. */
export function pattern(length: number, seed: number): Uint8Array {
  const words = new Uint32Array(Math.ceil(length / 4));
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  return new Uint8Array(words.buffer, 0, length);
}

/** A stream of `bytes` in chunks of `chunkSize` (fresh copies, as a network stream would give). */
export function streamOf(bytes: Uint8Array, chunkSize: number): ReadableStream<Uint8Array> {
  let offset = 0;
  return new ReadableStream({
    pull(controller) {
      if (offset >= bytes.byteLength) {
        controller.close();
        return;
      }
      controller.enqueue(bytes.slice(offset, offset + chunkSize));
      offset += chunkSize;
    },
  });
}

/**
 * Content generated chunk by chunk, never held whole: `digest()` hashes one pass, `stream()`
 * produces another. `onPull(offset)` runs before each chunk with the bytes produced so far.
 */
export function lazyStream(total: number, chunkSize: number, seed: number) {
  const chunk = (offset: number) =>
    pattern(Math.min(chunkSize, total - offset), seed * 100_003 + offset / chunkSize);
  return {
    async digest(): Promise<string> {
      const hasher = new Hasher();
      for (let offset = 0; offset < total; offset += chunkSize) hasher.update(chunk(offset));
      return await Promise.resolve(hasher.digest());
    },
    stream(options: { onPull?: (offset: number) => Promise<void> } = {}) {
      let offset = 0;
      return new ReadableStream<Uint8Array>({
        async pull(controller) {
          await options.onPull?.(offset);
          if (offset >= total) {
            controller.close();
            return;
          }
          const bytes = chunk(offset);
          offset += bytes.byteLength;
          controller.enqueue(bytes);
        },
      }, { highWaterMark: 0 });
    },
  };
}

async function bytesOf(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function digestOfStream(stream: ReadableStream<Uint8Array>): Promise<string> {
  const hasher = new Hasher();
  for await (const chunk of stream) hasher.update(chunk);
  return hasher.digest();
}

async function collect(iterable: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const item of iterable) out.push(item);
  return out;
}

function sorted(keys: string[]): string[] {
  return [...keys].sort();
}

async function pool<T>(items: T[], size: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: size }, async () => {
    while (next < items.length) await fn(items[next++]);
  }));
}

function mb(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}
