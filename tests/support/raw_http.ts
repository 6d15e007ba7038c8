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
  const raw = new TextDecoder().decode(concat(chunks));
  return parseAnswer(raw);
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

function parseAnswer(raw: string): RawAnswer {
  // Skip interim responses (100 Continue) to the final one.
  let rest = raw;
  while (/^HTTP\/1\.[01] 1\d\d /.test(rest) && rest.includes("\r\n\r\n")) {
    rest = rest.slice(rest.indexOf("\r\n\r\n") + 4);
  }
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(rest);
  if (!status) return { status: 0, headers: new Headers(), body: "", raw };
  const end = rest.indexOf("\r\n\r\n");
  const head = end < 0 ? rest : rest.slice(0, end);
  const headers = new Headers();
  for (const line of head.split("\r\n").slice(1)) {
    const colon = line.indexOf(":");
    if (colon > 0) headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
  }
  return { status: Number(status[1]), headers, body: end < 0 ? "" : rest.slice(end + 4), raw };
}
