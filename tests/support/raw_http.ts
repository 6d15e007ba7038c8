/**
 * HTTP/1.1 over a bare TCP socket, for requests fetch() will not send as written: a Host header
 * of our choosing, absolute-form or over-long targets, invented framing, non-ASCII bytes.
 *
 *   const answer = await rawRequest(port, "GET /v2/ HTTP/1.1\r\nHost: x/metrics#\r\n\r\n");
 *   answer.status; answer.headers.get("content-type"); answer.body
 *
 * The request is sent as given (include `Connection: close`, or the read waits for
 * `timeoutMs`), and everything the server sends until it closes is parsed as one response. A
 * server that closes without a status line gives status 0.
 */

export interface RawAnswer {
  /** 0 when no status line came back. */
  status: number;
  headers: Headers;
  /** The body as text (after the head; chunked bodies are left framed). */
  body: string;
  /** The body's bytes, as received (chunked bodies are left framed). */
  bodyBytes: Uint8Array;
  /** Everything received, as text. */
  raw: string;
}

export async function rawRequest(
  port: number,
  request: string | Uint8Array,
  { timeoutMs = 5_000, hostname = "127.0.0.1" } = {},
): Promise<RawAnswer> {
  const conn = await Deno.connect({ hostname, port });
  const timer = setTimeout(() => {
    try {
      conn.close();
    } catch { /* already closed */ }
  }, timeoutMs);
  const chunks: Uint8Array[] = [];
  try {
    const bytes = typeof request === "string" ? new TextEncoder().encode(request) : request;
    try {
      for (let offset = 0; offset < bytes.byteLength;) {
        offset += await conn.write(bytes.subarray(offset));
      }
    } catch {
      // The server may answer and close before it read everything (an over-long head).
    }
    const buffer = new Uint8Array(64 << 10);
    while (true) {
      let n: number | null;
      try {
        n = await conn.read(buffer);
      } catch {
        break; // reset or closed by the timer: keep what arrived
      }
      if (n === null) break;
      chunks.push(buffer.slice(0, n));
    }
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* already closed */ }
  }
  return parseAnswer(concat(chunks));
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

/** Where the head that starts at `from` ends (the index after its blank line), or -1. */
function headEnd(bytes: Uint8Array, from: number): number {
  for (let i = from; i + 3 < bytes.length; i++) {
    if (bytes[i] === 13 && bytes[i + 1] === 10 && bytes[i + 2] === 13 && bytes[i + 3] === 10) {
      return i + 4;
    }
  }
  return -1;
}

function parseAnswer(bytes: Uint8Array): RawAnswer {
  const latin1 = new TextDecoder("latin1");
  const raw = new TextDecoder().decode(bytes);
  // Skip interim responses (100 Continue) to the final one.
  let start = 0;
  while (/^HTTP\/1\.[01] 1\d\d /.test(latin1.decode(bytes.subarray(start, start + 13)))) {
    const end = headEnd(bytes, start);
    if (end < 0) break;
    start = end;
  }
  const end = headEnd(bytes, start);
  const head = latin1.decode(bytes.subarray(start, end < 0 ? bytes.length : end - 4));
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(head);
  const bodyBytes = end < 0 ? new Uint8Array() : bytes.subarray(end);
  if (!status) return { status: 0, headers: new Headers(), body: "", bodyBytes, raw };
  const headers = new Headers();
  for (const line of head.split("\r\n").slice(1)) {
    const colon = line.indexOf(":");
    if (colon > 0) headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
  }
  return {
    status: Number(status[1]),
    headers,
    body: new TextDecoder().decode(bodyBytes),
    bodyBytes,
    raw,
  };
}
