/**
 * SIGTERM as Kubernetes sends it: the mirror stops accepting, lets the responses and downloads
 * in flight finish within --shutdown-grace, then exits 0; past the grace period it closes what
 * is left instead of hanging until SIGKILL.
 */
import { concatBytes } from "../../src/runtime/bytes.ts";
import { assert, assertEquals } from "../support/assert.ts";
import { startMirror } from "../support/mirror.ts";
import { slowUpstream } from "../support/slow_upstream.ts";

const blobPath = (digest: string) => `/v2/slow.test/library/x/blobs/${digest}`;

const encoder = new TextEncoder();

/** Everything the server sends on `conn` until it closes it. */
async function readUntilClosed(conn: Deno.Conn): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  const buffer = new Uint8Array(64 * 1024);
  for (let n; (n = await conn.read(buffer)) !== null;) chunks.push(buffer.slice(0, n));
  conn.close();
  return concatBytes(chunks, chunks.reduce((sum, c) => sum + c.byteLength, 0));
}

Deno.test("shutdown: a response in flight finishes within the grace period, then exit 0", async () => {
  await using upstream = slowUpstream(2000);
  await using mirror = await startMirror({
    upstreams: [{ namespace: "slow.test", host: upstream.host, tls: false }],
    extraArgs: ["--shutdown-grace", "20s"],
  });
  // A blob GET and, pipelined behind it on the same connection, GET /readyz: the second is
  // answered after the first, so during the shutdown.
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: mirror.port });
  const head = `HTTP/1.1\r\nHost: mirror.test\r\n\r\n`;
  await conn.write(encoder.encode(`GET ${blobPath(upstream.digest)} ${head}GET /readyz ${head}`));
  const received = readUntilClosed(conn);
  await new Promise((resolve) => setTimeout(resolve, 300));
  const stopped = performance.now();
  const exiting = mirror.stop(30_000);
  await mirror.waitForLog(/SIGTERM: shutting down/);
  const refused = await fetch(mirror.url + "/v2/").then(() => false, () => true);
  assert(refused, "a new connection after SIGTERM is refused");

  const bytes = await received;
  const text = new TextDecoder("latin1").decode(bytes);
  assert(text.startsWith("HTTP/1.1 200 OK\r\n"), text.slice(0, 200));
  const bodyStart = text.indexOf("\r\n\r\n") + 4;
  assertEquals(
    bytes.subarray(bodyStart, bodyStart + upstream.blob.byteLength),
    upstream.blob,
    "the response in flight arrived whole",
  );
  const second = text.slice(bodyStart + upstream.blob.byteLength);
  assert(second.startsWith("HTTP/1.1 503 Service Unavailable\r\n"), second);
  assert(second.endsWith("not ready: shutting down\n"), second);
  const status = await exiting;
  assertEquals(status?.code, 0);
  assert(performance.now() - stopped < 10_000, "it exited once the work was done");
  assertEquals(upstream.blobGets(), 1);
});

Deno.test("shutdown: past --shutdown-grace what is left is closed and the process exits 0", async () => {
  await using upstream = slowUpstream(8000);
  await using mirror = await startMirror({
    upstreams: [{ namespace: "slow.test", host: upstream.host, tls: false }],
    extraArgs: ["--shutdown-grace", "1s"],
  });
  const response = await mirror.fetch(blobPath(upstream.digest));
  const body = response.arrayBuffer().then(() => "whole", () => "cut");
  await new Promise((resolve) => setTimeout(resolve, 300));
  const stopped = performance.now();
  const status = await mirror.stop(30_000);
  const took = performance.now() - stopped;
  assertEquals(status?.code, 0, mirror.logs());
  assert(took >= 900 && took < 4000, `exited ${took.toFixed(0)} ms after SIGTERM`);
  assertEquals(await body, "cut", "an 8 s response cannot finish in a 1 s grace period");
  assert(/stopping now: closing 1 connection\(s\)/.test(mirror.logs()), mirror.logs());
});

Deno.test("shutdown: SIGTERM during 10 concurrent pulls: all 10 finish byte-exact, /readyz says 503 first, exit 0", async () => {
  await using upstream = slowUpstream(1500, 64 * 1024, 10);
  await using mirror = await startMirror({
    upstreams: [{ namespace: "slow.test", host: upstream.host, tls: false }],
    extraArgs: ["--shutdown-grace", "20s"],
  });
  // Nine pulls with fetch, the tenth on a raw connection with GET /readyz pipelined behind it:
  // that answer is written after the blob, during the shutdown.
  const pulls = upstream.digests.slice(1).map(async (digest, i) => {
    const response = await mirror.fetch(blobPath(digest));
    return { i: i + 1, bytes: new Uint8Array(await response.arrayBuffer()) };
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: mirror.port });
  const head = `HTTP/1.1\r\nHost: mirror.test\r\n\r\n`;
  await conn.write(
    encoder.encode(`GET ${blobPath(upstream.digests[0])} ${head}GET /readyz ${head}`),
  );
  const received = readUntilClosed(conn);
  await new Promise((resolve) => setTimeout(resolve, 300));
  const exiting = mirror.stop(30_000);
  await mirror.waitForLog(/SIGTERM: shutting down/);
  for (const { i, bytes } of await Promise.all(pulls)) {
    assertEquals(bytes, upstream.blobs[i], `pull ${i} arrived whole`);
  }
  const bytes = await received;
  const text = new TextDecoder("latin1").decode(bytes);
  const bodyStart = text.indexOf("\r\n\r\n") + 4;
  assertEquals(
    bytes.subarray(bodyStart, bodyStart + upstream.blobs[0].byteLength),
    upstream.blobs[0],
  );
  const readyz = text.slice(bodyStart + upstream.blobs[0].byteLength);
  assert(readyz.startsWith("HTTP/1.1 503 Service Unavailable\r\n"), readyz);
  assertEquals((await exiting)?.code, 0);
  assertEquals(upstream.blobGets(), 10);
});
