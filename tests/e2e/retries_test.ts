/**
 * Retries and resumption against a real mirror process and a scripted upstream speaking raw
 * HTTP/1.1 (edge case: the failures are the point): a reset connection, then a 503, then a
 * body cut at 40%, then the Range request that finishes it. The client sees one clean,
 * byte-exact answer; the upstream sees exactly those four requests.
 */
import { digestOf } from "../../src/oci/digest.ts";
import { assertEquals } from "../support/assert.ts";
import { randomBytes } from "../support/fake_upstream.ts";
import { startMirror } from "../support/mirror.ts";
import { closeQuietly, freePort } from "../support/tools.ts";

const encoder = new TextEncoder();
const MiB = 1 << 20;

/** Reads one request head; the request line and the Range header. */
async function readHead(conn: Deno.Conn): Promise<{ line: string; range?: string }> {
  const buffer = new Uint8Array(16 * 1024);
  let text = "";
  while (!text.includes("\r\n\r\n")) {
    const n = await conn.read(buffer);
    if (n === null) break;
    text += new TextDecoder().decode(buffer.subarray(0, n));
  }
  const [line, ...headers] = text.split("\r\n");
  const range = headers.find((h) => h.toLowerCase().startsWith("range:"))?.slice(6).trim();
  return { line, range };
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array) {
  for (let offset = 0; offset < bytes.byteLength;) {
    offset += await conn.write(bytes.subarray(offset));
  }
}

function flakyUpstream(blob: Uint8Array) {
  const digest = digestOf(blob);
  const port = freePort();
  const listener = Deno.listen({ hostname: "127.0.0.1", port });
  const seen: { line: string; range?: string }[] = [];
  const serving = (async () => {
    for await (const conn of listener) {
      try {
        const head = await readHead(conn);
        seen.push(head);
        const blobRequests = seen.filter((s) => s.line.includes("/blobs/")).length;
        const headers = (length: number, extra = "") =>
          `content-length: ${length}\r\ndocker-content-digest: ${digest}\r\nconnection: close\r\n${extra}\r\n`;
        if (blobRequests === 1) {
          // Closed before any answer: the connection breaks under the request.
        } else if (blobRequests === 2) {
          await writeAll(conn, encoder.encode(`HTTP/1.1 503 Service Unavailable\r\n${headers(0)}`));
        } else if (blobRequests === 3) {
          await writeAll(conn, encoder.encode(`HTTP/1.1 200 OK\r\n${headers(blob.byteLength)}`));
          await writeAll(conn, blob.subarray(0, Math.floor(blob.byteLength * 0.4)));
        } else {
          const start = Number(/bytes=(\d+)-/.exec(head.range ?? "")?.[1] ?? 0);
          const rest = blob.subarray(start);
          await writeAll(
            conn,
            encoder.encode(
              `HTTP/1.1 206 Partial Content\r\n${
                headers(
                  rest.byteLength,
                  `content-range: bytes ${start}-${blob.byteLength - 1}/${blob.byteLength}\r\n`,
                )
              }`,
            ),
          );
          await writeAll(conn, rest);
        }
      } catch { /* the mirror went away */ }
      closeQuietly(conn);
    }
  })();
  return {
    host: `127.0.0.1:${port}`,
    digest,
    seen,
    [Symbol.asyncDispose]: async () => {
      listener.close();
      await serving.catch(() => {});
    },
  };
}

Deno.test("retries: reset, 503 and a body cut at 40% still give one byte-exact answer, resumed by Range", async () => {
  const blob = randomBytes(4 * MiB + 123);
  await using upstream = flakyUpstream(blob);
  await using mirror = await startMirror({
    upstreams: [{ namespace: "flaky.test", host: upstream.host, tls: false }],
  });
  const response = await mirror.fetch(`/v2/flaky.test/library/x/blobs/${upstream.digest}`);
  assertEquals(response.status, 200);
  assertEquals(new Uint8Array(await response.arrayBuffer()), blob);
  const blobRequests = upstream.seen.filter((s) => s.line.includes("/blobs/"));
  assertEquals(blobRequests.map((s) => s.range ?? ""), ["", "", "", "bytes=1048576-"]);
  // Cached whole: asked again, upstream is not.
  const again = await mirror.fetch(`/v2/flaky.test/library/x/blobs/${upstream.digest}`);
  assertEquals(new Uint8Array(await again.arrayBuffer()), blob);
  assertEquals(upstream.seen.filter((s) => s.line.includes("/blobs/")).length, 4);
});
