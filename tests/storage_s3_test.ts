/** The storage contract against S3Storage on s3rver, plus what only S3 has. */
import { ListObjectsV2Command } from "@aws-sdk/client-s3";
import { RegistryError } from "../src/oci/errors.ts";
import { S3Storage, type S3StorageOptions } from "../src/storage/s3.ts";
import { blobKey } from "../src/storage/layout.ts";
import { digestOf } from "../src/oci/digest.ts";
import { assert, assertEquals, assertRejects } from "./support/assert.ts";
import { type S3rver, startS3rver } from "./support/s3rver.ts";
import { closeQuietly, freePort } from "./support/tools.ts";
import { pattern, storageContract } from "./storage_contract.ts";

let server: S3rver | undefined;
let cases = 0;

storageContract("s3", async () => {
  const s3 = server!;
  const prefix = `contract-${++cases}/`;
  const storage = new S3Storage({ ...s3.options, prefix });
  const spoolDir = await Deno.makeTempDir({ prefix: "s3-spool-" });
  return {
    storage,
    rawKeys: () => rawKeys(storage, prefix),
    spoolFile: async (bytes) => {
      const path = `${spoolDir}/${crypto.randomUUID()}`;
      await Deno.writeFile(path, bytes);
      return path;
    },
    dispose: async () => {
      await storage.close();
      await Deno.remove(spoolDir, { recursive: true });
    },
  };
}, {
  beforeAll: async () => {
    server = await startS3rver();
  },
  afterAll: async () => {
    await server?.stop();
    server = undefined;
  },
});

/** Every key in the bucket under `prefix`, temporary ones included. */
async function rawKeys(storage: S3Storage, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  let token: string | undefined;
  do {
    const out = await storage.client.send(
      new ListObjectsV2Command({ Bucket: storage.bucket, Prefix: "", ContinuationToken: token }),
    );
    for (const object of out.Contents ?? []) {
      if (object.Key!.startsWith(prefix)) keys.push(object.Key!.slice(prefix.length));
      else if (!object.Key!.startsWith("contract-")) keys.push(object.Key!); // stray temp keys
    }
    token = out.IsTruncated ? out.NextContinuationToken : undefined;
  } while (token);
  return keys;
}

async function withServer(fn: (s3: S3rver) => Promise<void>): Promise<void> {
  const s3 = await startS3rver();
  try {
    await fn(s3);
  } finally {
    await s3.stop();
  }
}

async function expectUnavailable(promise: Promise<unknown>, withinMs: number): Promise<void> {
  const started = Date.now();
  const error = await assertRejects(() => promise, RegistryError);
  const elapsed = Date.now() - started;
  assertEquals(error.code, "UNAVAILABLE", error.message);
  assert(elapsed < withinMs, `took ${elapsed} ms: ${error.message}`);
}

const quick: Partial<S3StorageOptions> = {
  connectTimeoutMs: 500,
  requestTimeoutMs: 1_000,
  idleTimeoutMs: 1_000,
  maxAttempts: 2,
};

Deno.test("s3: nothing listening -> UNAVAILABLE, promptly", async () => {
  const storage = new S3Storage({
    bucket: "test-bucket",
    region: "us-east-1",
    endpoint: `http://127.0.0.1:${freePort()}`,
    accessKeyId: "S3RVER",
    secretAccessKey: "S3RVER",
  });
  try {
    const key = blobKey(digestOf(new Uint8Array(1)));
    await expectUnavailable(storage.init(), 5_000);
    await expectUnavailable(storage.stat(key), 5_000);
    await expectUnavailable(storage.read(key), 5_000);
    await expectUnavailable(storage.readBytes(key), 5_000);
    await expectUnavailable(storage.write(key, new Uint8Array(1)), 5_000);
    await expectUnavailable(
      storage.write(key, ReadableStream.from([new Uint8Array(1)])),
      5_000,
    );
    await expectUnavailable(storage.delete(key), 5_000);
    await expectUnavailable(Array.fromAsync(storage.list("blobs/")), 5_000);
  } finally {
    await storage.close();
  }
});

Deno.test("s3: server stopped while in use -> UNAVAILABLE", async () => {
  const s3 = await startS3rver();
  const storage = new S3Storage({ ...s3.options, prefix: "stopped/" });
  try {
    const bytes = pattern(1000, 1);
    const key = blobKey(digestOf(bytes));
    await storage.write(key, bytes);
    assertEquals((await storage.stat(key))?.size, 1000);
    await s3.stop();
    await expectUnavailable(storage.stat(key), 5_000);
    await expectUnavailable(storage.read(key), 5_000);
    await expectUnavailable(storage.write(key, bytes), 5_000);
  } finally {
    await storage.close();
    await s3.stop();
  }
});

Deno.test("s3: a server that accepts but never answers -> UNAVAILABLE, no hang", async () => {
  await withServer(async (s3) => {
    const storage = new S3Storage({ ...s3.options, ...quick, prefix: "frozen/" });
    try {
      const key = blobKey(digestOf(new Uint8Array(1)));
      await storage.write(key, new Uint8Array(1));
      s3.pause();
      try {
        await expectUnavailable(storage.stat(key), 8_000);
        await expectUnavailable(storage.read(key), 8_000);
        await expectUnavailable(storage.write(key, new Uint8Array(1)), 8_000);
      } finally {
        s3.resume();
      }
    } finally {
      await storage.close();
    }
  });
});

Deno.test("s3: wrong bucket -> UNAVAILABLE at init", async () => {
  await withServer(async (s3) => {
    const storage = new S3Storage({ ...s3.options, bucket: "no-such-bucket" });
    try {
      await expectUnavailable(storage.init(), 5_000);
      await expectUnavailable(storage.write("blobs/x", new Uint8Array(1)), 5_000);
    } finally {
      await storage.close();
    }
  });
});

Deno.test("s3: directUrl presigns a GET when redirect is on", async () => {
  await withServer(async (s3) => {
    const plain = new S3Storage({ ...s3.options, prefix: "p/" });
    const redirecting = new S3Storage({ ...s3.options, prefix: "p/", redirect: true });
    try {
      const bytes = pattern(10_000, 2);
      const key = blobKey(digestOf(bytes));
      await plain.write(key, bytes);
      assertEquals(plain.directUrl, undefined, "no presigning without --s3-redirect");
      const url = await redirecting.directUrl!(key);
      assert(url, "a URL");
      assert(url.includes("X-Amz-Expires=300"), url);
      assert(url.includes("/p/blobs/"), url);
      const response = await fetch(url);
      assertEquals(response.status, 200);
      assertEquals(new Uint8Array(await response.arrayBuffer()), bytes);
    } finally {
      await plain.close();
      await redirecting.close();
    }
  });
});

Deno.test("s3: keys live under the prefix", async () => {
  await withServer(async (s3) => {
    const a = new S3Storage({ ...s3.options, prefix: "mirror-a" });
    const b = new S3Storage({ ...s3.options, prefix: "mirror-b/" });
    try {
      assertEquals(a.prefix, "mirror-a/");
      await a.write("repositories/x/y/_tags/1", new Uint8Array([1]));
      assertEquals(await b.stat("repositories/x/y/_tags/1"), null);
      assertEquals(await Array.fromAsync(a.list("")), ["repositories/x/y/_tags/1"]);
      assertEquals(await rawKeys(a, ""), ["mirror-a/repositories/x/y/_tags/1"]);
    } finally {
      await a.close();
      await b.close();
    }
  });
});

/**
 * A TCP proxy in front of s3rver that misbehaves on request: answers the next connections with
 * 503 SlowDown, or cuts them after some bytes of the answer. (Plain TCP, so the Host header the
 * client signed reaches s3rver unchanged.)
 */
class FaultyProxy {
  readonly port: number;
  /** Upcoming connections answered with 503 SlowDown and closed. */
  slowDowns = 0;
  /** Upcoming connections answered with 507 InsufficientStorage (a full store) and closed. */
  insufficient = 0;
  /** Upcoming connections cut after this many bytes of the answer. */
  cuts = 0;
  cutAfter = 0;
  /** Upcoming connections whose requests lose their Range header (a server ignoring it). */
  ignoreRanges = 0;
  connections = 0;
  #listener: Deno.Listener;
  #open = new Set<Deno.Conn>();
  #tasks = new Set<Promise<void>>();
  #accepting: Promise<void>;

  constructor(private target: number) {
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    this.#accepting = this.#accept();
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async #accept(): Promise<void> {
    try {
      for await (const conn of this.#listener) {
        this.connections++;
        const task = this.#handle(conn).catch(() => {}).finally(() => this.#tasks.delete(task));
        this.#tasks.add(task);
      }
    } catch { /* listener closed */ }
  }

  async #handle(client: Deno.Conn): Promise<void> {
    this.#open.add(client);
    try {
      if (this.slowDowns > 0 || this.insufficient > 0) {
        const [status, code] = this.slowDowns > 0
          ? ["503 Slow Down", "SlowDown"]
          : ["507 Insufficient Storage", "InsufficientStorage"];
        if (this.slowDowns > 0) this.slowDowns--;
        else this.insufficient--;
        await client.read(new Uint8Array(64 * 1024)); // the request (or its start)
        const body = `<?xml version="1.0"?><Error><Code>${code}</Code>` +
          "<Message>Cannot take this now.</Message></Error>";
        await client.write(new TextEncoder().encode(
          `HTTP/1.1 ${status}\r\nContent-Type: application/xml\r\n` +
            `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
        ));
        return;
      }
      const server = await Deno.connect({ hostname: "127.0.0.1", port: this.target });
      this.#open.add(server);
      let limit = Infinity;
      if (this.cuts > 0) {
        this.cuts--;
        limit = this.cutAfter;
      }
      let stripRange = false;
      if (this.ignoreRanges > 0) {
        this.ignoreRanges--;
        stripRange = true;
      }
      const up = (async () => {
        const buffer = new Uint8Array(64 * 1024);
        for (;;) {
          const n = await client.read(buffer);
          if (n === null) break;
          let data = buffer.subarray(0, n);
          if (stripRange) {
            // Headers of a bodiless GET arrive whole; the signature does not cover Range here.
            const text = new TextDecoder("latin1").decode(data).replace(
              /^range:[^\r\n]*\r\n/im,
              "",
            );
            data = Uint8Array.from(text, (c) => c.charCodeAt(0));
          }
          await writeAll(server, data);
        }
      })().catch(() => {});
      const down = (async () => {
        const buffer = new Uint8Array(64 * 1024);
        let sent = 0;
        for (;;) {
          const n = await server.read(buffer);
          if (n === null) break;
          const allowed = Math.min(n, limit - sent);
          await writeAll(client, buffer.subarray(0, allowed));
          sent += allowed;
          if (sent >= limit) break; // cut mid-answer
        }
      })().catch(() => {});
      await Promise.race([up, down]);
      closeQuietly(server);
      closeQuietly(client);
      await Promise.all([up, down]);
      this.#open.delete(server);
    } finally {
      closeQuietly(client);
      this.#open.delete(client);
    }
  }

  async close(): Promise<void> {
    this.#listener.close();
    await this.#accepting;
    for (const conn of this.#open) closeQuietly(conn);
    await Promise.all(this.#tasks);
  }
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < data.byteLength) offset += await conn.write(data.subarray(offset));
}

// The proxy misbehaves per connection and the SDK keeps connections alive, so every phase below
// uses a fresh S3Storage (fresh connections).
async function throughProxy(
  s3: S3rver,
  proxy: FaultyProxy,
  prefix: string,
  fn: (storage: S3Storage) => Promise<void>,
): Promise<void> {
  const storage = new S3Storage({ ...s3.options, endpoint: proxy.endpoint, prefix });
  try {
    await fn(storage);
  } finally {
    await storage.close();
  }
}

Deno.test("s3: throttling (503 SlowDown) is retried with backoff", async () => {
  await withServer(async (s3) => {
    const proxy = new FaultyProxy(s3.port);
    try {
      const bytes = pattern(5000, 3);
      const key = blobKey(digestOf(bytes));
      proxy.slowDowns = 2;
      await throughProxy(s3, proxy, "slow/", (storage) => storage.write(key, bytes));
      assertEquals(proxy.slowDowns, 0);
      proxy.slowDowns = 2;
      await throughProxy(s3, proxy, "slow/", async (storage) => {
        assertEquals((await storage.stat(key))?.size, 5000);
      });
      assertEquals(proxy.slowDowns, 0);
      proxy.slowDowns = 2;
      await throughProxy(s3, proxy, "slow/", async (storage) => {
        assertEquals(await storage.readBytes(key), bytes);
      });
      assertEquals(proxy.slowDowns, 0);
      // When it does not stop, the answer is UNAVAILABLE (after maxAttempts).
      proxy.slowDowns = 100;
      await throughProxy(s3, proxy, "slow/", async (storage) => {
        await expectUnavailable(storage.stat(key), 10_000);
      });
      assertEquals(proxy.slowDowns, 97, "three attempts");
    } finally {
      await proxy.close();
    }
  });
});

Deno.test("s3: a write the service cannot store (507, SlowDown) is INSUFFICIENT_STORAGE", async () => {
  await withServer(async (s3) => {
    const proxy = new FaultyProxy(s3.port);
    try {
      const bytes = pattern(5000, 4);
      const key = blobKey(digestOf(bytes));
      const refused = async (storage: S3Storage) => {
        const error = await assertRejects(() => storage.write(key, bytes), RegistryError);
        assertEquals(error.code, "INSUFFICIENT_STORAGE", error.message);
        assertEquals(error.status, 507);
      };
      proxy.insufficient = 100;
      await throughProxy(s3, proxy, "full/", refused);
      // A verified download's spool goes through the (multipart) upload path.
      const spool = await Deno.makeTempFile();
      await Deno.writeFile(spool, bytes);
      await throughProxy(s3, proxy, "full/", async (storage) => {
        const error = await assertRejects(() => storage.publishFile(key, spool), RegistryError);
        assertEquals(error.code, "INSUFFICIENT_STORAGE", error.message);
      });
      await Deno.remove(spool).catch(() => {});
      proxy.insufficient = 0;
      proxy.slowDowns = 100; // still refusing after the SDK's retries
      await throughProxy(s3, proxy, "full/", refused);
      // Reads that fail the same way stay UNAVAILABLE: nothing to do with space.
      await throughProxy(s3, proxy, "full/", async (storage) => {
        await expectUnavailable(storage.stat(key), 10_000);
      });
      proxy.slowDowns = 0;
      await throughProxy(s3, proxy, "full/", async (storage) => {
        assertEquals(await storage.stat(key), null, "nothing stored");
        await storage.write(key, bytes); // and it heals
        assertEquals(await storage.readBytes(key), bytes);
      });
    } finally {
      await proxy.close();
    }
  });
});

Deno.test("s3: a body cut mid-way is resumed with a ranged GET", async () => {
  await withServer(async (s3) => {
    const proxy = new FaultyProxy(s3.port);
    const direct = new S3Storage({ ...s3.options, prefix: "cut/" });
    try {
      const bytes = pattern(6 << 20, 4);
      const key = blobKey(digestOf(bytes));
      await direct.write(key, bytes);
      proxy.cutAfter = 1 << 20;
      proxy.cuts = 2;
      await throughProxy(s3, proxy, "cut/", async (storage) => {
        const whole = await storage.read(key);
        assertEquals(new Uint8Array(await new Response(whole!.body).arrayBuffer()), bytes);
      });
      assertEquals(proxy.cuts, 0, "both cuts happened");
      proxy.cuts = 1;
      await throughProxy(s3, proxy, "cut/", async (storage) => {
        const part = await storage.read(key, { start: 100, end: (3 << 20) + 99 });
        assertEquals(
          new Uint8Array(await new Response(part!.body).arrayBuffer()),
          bytes.subarray(100, (3 << 20) + 100),
        );
      });
      assertEquals(proxy.cuts, 0);
      // A resumed request answered from byte 0 (Range ignored) must not repeat delivered bytes.
      proxy.cuts = 1;
      await throughProxy(s3, proxy, "cut/", async (storage) => {
        const whole = await storage.read(key);
        proxy.ignoreRanges = 1; // the first connection is open: this hits the resume
        assertEquals(new Uint8Array(await new Response(whole!.body).arrayBuffer()), bytes);
      });
      assertEquals([proxy.cuts, proxy.ignoreRanges], [0, 0], "cut, then resumed without Range");
      // Connections that keep failing without progress end in an error, never in a truncated
      // body (cuts that each deliver progress are resumed indefinitely, by design).
      proxy.cutAfter = 0;
      proxy.cuts = 100;
      await throughProxy(s3, proxy, "cut/", async (storage) => {
        const error = await assertRejects(async () => {
          const broken = await storage.read(key);
          await new Response(broken!.body).arrayBuffer();
        }, RegistryError);
        assertEquals(error.code, "UNAVAILABLE");
      });
    } finally {
      await direct.close();
      await proxy.close();
    }
  });
});

Deno.test("s3: a consumer pausing past the idle timeout still gets the whole body", async () => {
  await withServer(async (s3) => {
    const storage = new S3Storage({ ...s3.options, idleTimeoutMs: 500, prefix: "idle/" });
    try {
      const bytes = pattern(16 << 20, 5);
      const key = blobKey(digestOf(bytes));
      await storage.write(key, bytes);
      const object = await storage.read(key);
      const reader = object!.body.getReader();
      const chunks: Uint8Array[] = [];
      const first = await reader.read();
      chunks.push(first.value!);
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        chunks.push(value);
      }
      assertEquals(
        new Uint8Array(await new Blob(chunks as Uint8Array<ArrayBuffer>[]).arrayBuffer()),
        bytes,
      );
    } finally {
      await storage.close();
    }
  });
});
