/**
 * A minimal HTTP/1.1 client for measuring downloads: one TCP connection per request, counts the
 * body bytes without keeping them, follows redirects (S3 presigned URLs), gives up after a time
 * limit.
 *
 * The client must not be the bottleneck. Measured against nginx sendfile serving 1 GiB on this
 * loopback: fetch() 250-500 MiB/s, curl -o /dev/null 450-650 MiB/s, Deno.connect reading into a
 * reused 1-4 MiB buffer 900-1700 MiB/s: every one of them slower than nginx, so they would have
 * measured themselves. What costs is the kernel copying every byte into user memory; Linux can
 * skip that for TCP: recv(MSG_TRUNC) discards received bytes and returns their count. So on
 * Linux the body is drained with libc recv(MSG_TRUNC | MSG_WAITALL) through Deno's FFI (about
 * 2300-3200 MiB/s against the same nginx, like Python's recv_into with MSG_TRUNC); elsewhere,
 * or when libc cannot be loaded, Deno.connect with a reused buffer.
 */

export interface GetOptions {
  method?: "GET" | "HEAD";
  headers?: Record<string, string>;
  /** Most bytes per read/discard call. Default 4 MiB; use less for many concurrent downloads. */
  bufferSize?: number;
  /** Abort the whole request (redirects included) after this long. Default 120 s. */
  timeoutMs?: number;
  /** Redirects followed. Default 3. */
  maxRedirects?: number;
}

export interface GetResult {
  /** Status of the last response (after redirects). */
  status: number;
  /** Response headers of the last response, lower-case names. */
  headers: Map<string, string>;
  /** Body bytes received. */
  bytes: number;
  /** From before connecting to the last byte, in milliseconds. */
  ms: number;
  /** URLs of the redirects followed. */
  redirects: string[];
}

/** Which receiver downloads use: "recv(MSG_TRUNC)" or "Deno.connect". */
export function receiverName(): string {
  return libc() ? "recv(MSG_TRUNC) via FFI" : "Deno.connect + reused buffer";
}

const CRLFCRLF = [13, 10, 13, 10];
const HEAD_BUFFER = 64 << 10;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export async function httpGet(url: string, opts: GetOptions = {}): Promise<GetResult> {
  const started = performance.now();
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const redirects: string[] = [];
  let target = new URL(url);
  for (let hop = 0;; hop++) {
    const remaining = timeoutMs - (performance.now() - started);
    if (remaining <= 0) throw new Error(`GET ${url}: timed out after ${timeoutMs} ms`);
    const response = await exchange(target, opts, started + timeoutMs);
    const location = response.headers.get("location");
    if (
      response.status >= 300 && response.status < 400 && location &&
      hop < (opts.maxRedirects ?? 3)
    ) {
      target = new URL(location, target);
      redirects.push(target.href);
      continue;
    }
    return { ...response, ms: performance.now() - started, redirects };
  }
}

/** One TCP connection, as the exchange below needs it. */
interface Transport {
  /** Reads into `view`; 0 at the end of the stream. */
  read(view: Uint8Array): Promise<number>;
  /** Receives and drops up to `n` bytes (waits for all `n` unless the stream ends); the count. */
  discard(n: number): Promise<number>;
  write(bytes: Uint8Array): Promise<void>;
  close(): void;
}

async function exchange(
  url: URL,
  opts: GetOptions,
  deadline: number,
): Promise<{ status: number; headers: Map<string, string>; bytes: number }> {
  if (url.protocol !== "http:") throw new Error(`bench client speaks plain http only: ${url}`);
  const method = opts.method ?? "GET";
  const port = Number(url.port || 80);
  const ffi = libc();
  const conn: Transport = ffi && /^\d+\.\d+\.\d+\.\d+$/.test(url.hostname)
    ? await FfiTransport.connect(ffi, url.hostname, port, opts.bufferSize ?? 4 << 20)
    : await DenoTransport.connect(url.hostname, port, opts.bufferSize ?? 4 << 20);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    conn.close();
  }, Math.max(0, deadline - performance.now()));
  try {
    const lines = [
      `${method} ${url.pathname}${url.search} HTTP/1.1`,
      `Host: ${url.host}`,
      "User-Agent: oci-registry-bench",
      "Connection: close",
    ];
    const headers = { accept: "*/*", ...opts.headers };
    for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
    await conn.write(encoder.encode(lines.join("\r\n") + "\r\n\r\n"));

    // Status line and headers (anything after them is body).
    const buffer = new Uint8Array(HEAD_BUFFER);
    let filled = 0;
    let headerEnd = -1;
    while (headerEnd < 0) {
      if (filled === buffer.length) throw new Error(`${url}: response headers too large`);
      const n = await conn.read(buffer.subarray(filled));
      if (n === 0) throw new Error(`${url}: connection closed before the response headers`);
      filled += n;
      headerEnd = indexOf(buffer, CRLFCRLF, Math.max(0, filled - n - 3), filled);
    }
    const head = decoder.decode(buffer.subarray(0, headerEnd)).split("\r\n");
    const statusMatch = /^HTTP\/1\.[01] (\d{3})/.exec(head[0]);
    if (!statusMatch) throw new Error(`${url}: bad status line ${JSON.stringify(head[0])}`);
    const status = Number(statusMatch[1]);
    const responseHeaders = new Map<string, string>();
    for (const line of head.slice(1)) {
      const colon = line.indexOf(":");
      if (colon > 0) {
        responseHeaders.set(
          line.slice(0, colon).trim().toLowerCase(),
          line.slice(colon + 1).trim(),
        );
      }
    }
    const leftover = buffer.slice(headerEnd + 4, filled);
    const noBody = method === "HEAD" || status === 204 || status === 304 || status < 200;
    if (noBody) return { status, headers: responseHeaders, bytes: 0 };

    const length = responseHeaders.get("content-length");
    const chunked = /chunked/i.test(responseHeaders.get("transfer-encoding") ?? "");
    let bytes: number;
    if (chunked) {
      bytes = await readChunked(conn, buffer, leftover);
    } else if (length !== undefined) {
      const want = Number(length);
      bytes = leftover.length;
      while (bytes < want) {
        const n = await conn.discard(want - bytes);
        if (n === 0) break;
        bytes += n;
      }
    } else {
      bytes = leftover.length;
      while (true) {
        const n = await conn.discard(Number.MAX_SAFE_INTEGER);
        if (n === 0) break;
        bytes += n;
      }
    }
    return { status, headers: responseHeaders, bytes };
  } catch (e) {
    if (timedOut) throw new Error(`${url}: timed out`);
    throw e;
  } finally {
    clearTimeout(timer);
    conn.close();
  }
}

class DenoTransport implements Transport {
  readonly #conn: Deno.Conn;
  readonly #buffer: Uint8Array;
  #closed = false;

  private constructor(conn: Deno.Conn, bufferSize: number) {
    this.#conn = conn;
    this.#buffer = new Uint8Array(bufferSize);
  }

  static async connect(hostname: string, port: number, bufferSize: number) {
    return new DenoTransport(await Deno.connect({ hostname, port }), bufferSize);
  }

  async read(view: Uint8Array): Promise<number> {
    return await this.#conn.read(view) ?? 0;
  }

  async discard(n: number): Promise<number> {
    const view = n < this.#buffer.length ? this.#buffer.subarray(0, n) : this.#buffer;
    return await this.#conn.read(view) ?? 0;
  }

  async write(bytes: Uint8Array): Promise<void> {
    let written = 0;
    while (written < bytes.length) written += await this.#conn.write(bytes.subarray(written));
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch { /* closed by the peer */ }
  }
}

// ---------------------------------------------------------------------------------------------
// libc sockets through FFI, for recv(MSG_TRUNC)

const AF_INET = 2;
const SOCK_STREAM = 1;
const SOL_SOCKET = 1;
const SO_RCVTIMEO = 20;
const MSG_TRUNC = 0x20;
const MSG_WAITALL = 0x100;
/** A blocking recv never waits longer than this (the request's own timer closes earlier). */
const RECV_TIMEOUT_S = 60;

const LIBC_SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32", nonblocking: true },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize", nonblocking: true },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize", nonblocking: true },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
} as const;

type Libc = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>["symbols"];
let loaded: Libc | null | undefined;

function libc(): Libc | null {
  if (loaded !== undefined) return loaded;
  loaded = null;
  if (Deno.build.os !== "linux" || Deno.env.get("BENCH_NO_FFI") === "1") return loaded;
  try {
    loaded = Deno.dlopen("libc.so.6", LIBC_SYMBOLS).symbols;
  } catch { /* no FFI permission or no glibc: use Deno.connect */ }
  return loaded;
}

class FfiTransport implements Transport {
  readonly #libc: Libc;
  readonly #fd: number;
  /** Never read by anyone: recv(MSG_TRUNC) on TCP does not write into it. */
  readonly #sink: Uint8Array;
  #closed = false;
  #pending = 0;

  private constructor(libc: Libc, fd: number, bufferSize: number) {
    this.#libc = libc;
    this.#fd = fd;
    this.#sink = new Uint8Array(bufferSize);
  }

  static async connect(libc: Libc, ip: string, port: number, bufferSize: number) {
    const fd = libc.socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) throw new Error("socket() failed");
    const timeout = new BigInt64Array([BigInt(RECV_TIMEOUT_S), 0n]);
    libc.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, new Uint8Array(timeout.buffer), 16);
    const address = new Uint8Array(16);
    const view = new DataView(address.buffer);
    view.setUint16(0, AF_INET, true);
    view.setUint16(2, port, false);
    address.set(ip.split(".").map(Number), 4);
    if (await libc.connect(fd, address, address.length) !== 0) {
      libc.close(fd);
      throw new Error(`connect to ${ip}:${port} failed`);
    }
    return new FfiTransport(libc, fd, bufferSize);
  }

  async #call(fn: () => Promise<number | bigint>): Promise<number> {
    if (this.#closed) throw new Error("connection closed");
    this.#pending++;
    try {
      const n = Number(await fn());
      if (this.#closed) throw new Error("connection closed");
      if (n < 0) throw new Error("socket call failed");
      return n;
    } finally {
      if (--this.#pending === 0 && this.#closed) this.#libc.close(this.#fd);
    }
  }

  read(view: Uint8Array): Promise<number> {
    return this.#call(() => this.#libc.recv(this.#fd, view, BigInt(view.length), 0));
  }

  discard(n: number): Promise<number> {
    const size = Math.min(n, this.#sink.length);
    return this.#call(() =>
      this.#libc.recv(this.#fd, this.#sink, BigInt(size), MSG_TRUNC | MSG_WAITALL)
    );
  }

  async write(bytes: Uint8Array): Promise<void> {
    let written = 0;
    while (written < bytes.length) {
      const rest = bytes.subarray(written);
      written += await this.#call(() => this.#libc.send(this.#fd, rest, BigInt(rest.length), 0));
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    // A call blocked in recv on another thread returns once the socket is shut down; the file
    // descriptor is closed after it returned, so it is never reused under a pending call.
    this.#libc.shutdown(this.#fd, 2);
    if (this.#pending === 0) this.#libc.close(this.#fd);
  }
}

/** Counts the data bytes of a chunked body without keeping them. */
async function readChunked(conn: Transport, buffer: Uint8Array, first: Uint8Array) {
  let data = 0;
  let state: "size" | "data" | "crlf" | "trailer" = "size";
  let line = "";
  let left = 0; // data bytes left in the current chunk, or CRLF bytes to skip
  let pending: Uint8Array | null = first;
  while (true) {
    let view: Uint8Array;
    if (pending) {
      view = pending;
      pending = null;
    } else {
      const n = await conn.read(buffer);
      if (n === 0) throw new Error("connection closed inside a chunked body");
      view = buffer.subarray(0, n);
    }
    let i = 0;
    while (i < view.length) {
      if (state === "data") {
        const take = Math.min(left, view.length - i);
        data += take;
        left -= take;
        i += take;
        if (left === 0) {
          state = "crlf";
          left = 2;
        }
      } else if (state === "crlf") {
        i++;
        if (--left === 0) state = "size";
      } else {
        const byte = view[i++];
        if (byte !== 10) {
          if (byte !== 13) line += String.fromCharCode(byte);
          continue;
        }
        if (state === "trailer") {
          if (line === "") return data;
          line = "";
          continue;
        }
        const size = parseInt(line.split(";")[0], 16);
        line = "";
        if (Number.isNaN(size)) throw new Error("bad chunk size line");
        if (size === 0) {
          state = "trailer";
        } else {
          state = "data";
          left = size;
        }
      }
    }
  }
}

function indexOf(haystack: Uint8Array, needle: number[], from: number, to: number): number {
  outer: for (let i = from; i + needle.length <= to; i++) {
    for (let j = 0; j < needle.length; j++) {
      if (haystack[i + j] !== needle[j]) continue outer;
    }
    return i;
  }
  return -1;
}

/** MiB per second. */
export function mibPerSecond(bytes: number, ms: number): number {
  return bytes / (1 << 20) / (ms / 1000);
}
