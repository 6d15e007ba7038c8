/**
 * One HTTP exchange with an upstream, and nothing about what it means: the choice between
 * fetch (one pooled Deno.HttpClient) and the insecure transport, redirects followed by hand with
 * the address policy re-checked on every hop of an implicit upstream (Authorization never
 * follows to another host or down to http), a connect/headers deadline per hop, a stall timer on
 * response bodies, and bounded body reads. Network failures become RegistryError UNAVAILABLE
 * with a short, credential-free reason, marked transient for the retry loop (retry.ts). What an
 * upstream's answer means (a status, a challenge) is for its callers.
 *
 * TLS: `Deno.createHttpClient` (Deno 2.9) has no option to skip certificate verification (unknown
 * options are silently ignored, and `caCerts` cannot pin a typical self-signed certificate: rustls
 * rejects a CA:TRUE certificate used as the server's own, `CaUsedAsEndEntity`). The
 * process-wide `--unsafely-ignore-certificate-errors` flag is not per upstream. So upstreams with
 * `accept_invalid_certs: true` are fetched through node:https with `rejectUnauthorized: false`,
 * which Deno implements for real; everything else uses fetch with full verification.
 */
import type { UpstreamConfig } from "../config/upstreams.ts";
import type { LogFn } from "../runtime/log.ts";
import { RegistryError } from "../oci/errors.ts";
import type { AddressPolicy } from "./address_policy.ts";
import type { InsecureTransport } from "./insecure_transport.ts";
import { markTransient } from "./retry.ts";

export const DEFAULT_USER_AGENT = "oci-registry/0.1";
const MAX_REDIRECTS = 5;

/** fetch as the transport uses it: no redirects followed, body untouched. */
type FetchFn = (
  url: URL,
  init: { method: string; headers: Headers; signal: AbortSignal },
) => Promise<Response>;

export interface TransportOptions {
  /** Time allowed for connecting and receiving response headers, per hop. */
  connectTimeoutMs: number;
  /** Time a response body may stall (no chunk arrives) before it errors. */
  idleTimeoutMs: number;
  log: LogFn;
  /** Checks every hop of an implicit upstream (SSRF guard). */
  policy: Pick<AddressPolicy, "check">;
}

/** Sends requests to upstreams; holds the pooled connections. */
export class Transport {
  readonly #connectTimeoutMs: number;
  readonly #idleTimeoutMs: number;
  readonly #log: LogFn;
  readonly #policy: Pick<AddressPolicy, "check">;
  #http: Deno.HttpClient | undefined;
  /** Loaded on first use: node:https is only needed for accept_invalid_certs upstreams. */
  #insecure: Promise<InsecureTransport> | undefined;
  readonly #insecureLogged = new Set<string>();

  constructor(options: TransportOptions) {
    this.#connectTimeoutMs = options.connectTimeoutMs;
    this.#idleTimeoutMs = options.idleTimeoutMs;
    this.#log = options.log;
    this.#policy = options.policy;
  }

  /**
   * Sends a request and follows up to 5 redirects by hand: relative Locations are resolved,
   * Authorization is dropped as soon as the host changes or the scheme downgrades to http,
   * and every hop of an implicit upstream passes the address policy.
   */
  async follow(
    upstream: UpstreamConfig,
    start: URL,
    method: "GET" | "HEAD",
    headers: Headers,
    signal: AbortSignal | undefined,
  ): Promise<{ response: Response; url: URL }> {
    let url = start;
    for (let hop = 0;; hop++) {
      if (!upstream.configured) await this.#policy.check(url);
      const response = await this.#send(upstream, url, method, headers, signal);
      if (![301, 302, 303, 307, 308].includes(response.status)) return { response, url };
      const location = response.headers.get("location");
      await discard(response);
      const from = describeHost(url, upstream);
      if (!location) {
        throw new RegistryError("UPSTREAM_ERROR", `${from} redirected without a Location`);
      }
      if (hop >= MAX_REDIRECTS) {
        throw new RegistryError("UPSTREAM_ERROR", `${from}: more than ${MAX_REDIRECTS} redirects`);
      }
      let next: URL;
      try {
        next = new URL(location, url);
      } catch {
        throw new RegistryError("UPSTREAM_ERROR", `${from} redirected to an invalid Location`);
      }
      if (next.protocol !== "https:" && next.protocol !== "http:") {
        throw new RegistryError("UPSTREAM_ERROR", `${from} redirected to a non-http(s) URL`);
      }
      next.hash = "";
      // Userinfo in a Location is never used (fetch refuses it; it would be a credential).
      next.username = "";
      next.password = "";
      if (
        headers.has("authorization") &&
        (next.host !== url.host || (url.protocol === "https:" && next.protocol === "http:"))
      ) {
        headers = new Headers(headers);
        headers.delete("authorization");
      }
      url = next;
    }
  }

  /** One request with a connect/headers deadline; network failures become UNAVAILABLE. */
  async #send(
    upstream: UpstreamConfig,
    url: URL,
    method: string,
    headers: Headers,
    signal: AbortSignal | undefined,
  ): Promise<Response> {
    signal?.throwIfAborted();
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(), this.#connectTimeoutMs);
    const combined = signal ? AbortSignal.any([signal, deadline.signal]) : deadline.signal;
    try {
      return await this.#fetchFor(upstream, url)(url, { method, headers, signal: combined });
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      const where = describeHost(url, upstream);
      const error = deadline.signal.aborted
        ? new RegistryError(
          "UNAVAILABLE",
          `cannot reach ${where}: no response within ${this.#connectTimeoutMs / 1000}s`,
        )
        : new RegistryError("UNAVAILABLE", `cannot reach ${where}: ${networkReason(e)}`);
      markTransient(error);
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  /** fetch with full verification, or node:https without it for accept_invalid_certs. */
  #fetchFor(upstream: UpstreamConfig, url: URL): FetchFn {
    if (upstream.acceptInvalidCerts && url.protocol === "https:") {
      const insecure = this.#insecure ??= import("./insecure_transport.ts").then((module) =>
        module.createInsecureTransport()
      );
      if (!this.#insecureLogged.has(upstream.namespace)) {
        this.#insecureLogged.add(upstream.namespace);
        this.#log(
          `upstream ${upstream.namespace}: TLS certificate verification is disabled`,
          "warn",
        );
      }
      return async (target, init) => (await insecure).fetch(target, init);
    }
    this.#http ??= Deno.createHttpClient({});
    const client = this.#http;
    return (target, init) =>
      fetch(target, {
        method: init.method,
        headers: init.headers,
        signal: init.signal,
        redirect: "manual",
        client,
      });
  }

  /** The 2xx response handed to the caller: same status and headers, stall-guarded body. */
  deliver(
    response: Response,
    upstream: UpstreamConfig,
    url: URL,
    signal: AbortSignal | undefined,
    onEnd?: () => void,
  ): Response {
    if (!response.body) {
      onEnd?.();
      return response;
    }
    return new Response(this.guard(response, upstream, url, signal, onEnd), {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
  }

  /** The body of `response`, erroring UNAVAILABLE once it stalls past the idle timeout. */
  guard(
    response: Response,
    upstream: UpstreamConfig,
    url: URL,
    signal: AbortSignal | undefined,
    onEnd?: () => void,
  ): ReadableStream<Uint8Array> {
    return withIdleTimeout(
      response.body!,
      this.#idleTimeoutMs,
      describeHost(url, upstream),
      signal,
      onEnd,
    );
  }

  /** Releases pooled connections (fetch's and the insecure transport's). */
  close(): void {
    this.#http?.close();
    this.#http = undefined;
    this.#insecure?.then((transport) => transport.close(), () => {});
    this.#insecure = undefined;
  }
}

/** scheme://host[:port] of an upstream (or one of its endpoints). */
export function upstreamOrigin(upstream: UpstreamConfig): string {
  return `${upstream.tls ? "https" : "http"}://${upstream.host}`;
}

/** host[:port] as URLs spell it (lower case, default port dropped). */
export function upstreamHost(upstream: UpstreamConfig): string {
  return new URL(upstreamOrigin(upstream)).host;
}

/** "upstream HOST", or "OTHER (for upstream HOST)" for redirect targets and token servers. */
export function describeHost(url: URL, upstream: UpstreamConfig): string {
  return url.host === upstreamHost(upstream)
    ? `upstream ${url.host}`
    : `${url.host} (for upstream ${upstream.host})`;
}

/** Cancels a body we do not hand on (frees the connection; keeps the resource sanitizer calm). */
export async function discard(response: Response): Promise<void> {
  try {
    await response.body?.cancel();
  } catch {
    // already errored or closed
  }
}

/** Reads a stream as UTF-8, up to `limit` bytes; beyond it throws, or truncates if `truncate`. */
export async function readText(
  body: ReadableStream<Uint8Array>,
  limit: number,
  truncate = false,
): Promise<string> {
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      size += value.byteLength;
      if (size > limit) {
        if (truncate) break;
        throw new RegistryError("UPSTREAM_ERROR", `upstream answer larger than ${limit} bytes`);
      }
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
  const all = new Uint8Array(Math.min(size, limit));
  let offset = 0;
  for (const chunk of chunks) {
    const part = chunk.subarray(0, all.byteLength - offset);
    all.set(part, offset);
    offset += part.byteLength;
    if (offset >= all.byteLength) break;
  }
  return new TextDecoder().decode(all);
}

/**
 * Wraps a body so it errors with RegistryError UNAVAILABLE when no chunk arrives within
 * `idleMs` while the consumer is waiting. The timer only runs during a pending upstream read
 * (highWaterMark 0: no read-ahead), so a slow consumer never trips it. Mid-body network errors
 * become UNAVAILABLE too; an abort by the caller's signal surfaces as its reason.
 *
 * The result is a byte stream: a consumer's BYOB reads go straight through to the network
 * body when it is a byte stream too (Deno's fetch bodies are), so the bytes land in the
 * consumer's own buffer with no copy and no per-chunk allocation.
 */
export function withIdleTimeout(
  body: ReadableStream<Uint8Array>,
  idleMs: number,
  where: string,
  signal?: AbortSignal,
  onEnd?: () => void,
): ReadableStream<Uint8Array> {
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    onEnd?.();
  };
  let byob: ReadableStreamBYOBReader | undefined;
  let plain: ReadableStreamDefaultReader<Uint8Array> | undefined;
  try {
    byob = body.getReader({ mode: "byob" });
  } catch {
    plain = body.getReader(); // e.g. node:https bodies (accept_invalid_certs)
  }
  const reader = (byob ?? plain)!;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const stalledError = () =>
    new RegistryError("UNAVAILABLE", `${where} stalled: no data for ${idleMs / 1000}s`);
  return new ReadableStream({
    type: "bytes",
    autoAllocateChunkSize: 64 * 1024,
    async pull(controller: ReadableByteStreamController) {
      let stalled = false;
      timer = setTimeout(() => {
        stalled = true;
        reader.cancel().catch(() => {});
      }, idleMs);
      try {
        // autoAllocateChunkSize guarantees a request, whatever kind of reader the consumer has.
        const request = controller.byobRequest!;
        if (byob) {
          const { done, value } = await byob.read(request.view as Uint8Array);
          if (stalled) throw stalledError();
          if (done) {
            end();
            controller.close();
            if (value) request.respondWithNewView(value);
          } else {
            request.respondWithNewView(value);
          }
        } else {
          const { done, value } = await plain!.read();
          if (stalled) throw stalledError();
          if (done) {
            end();
            controller.close();
            request.respond(0);
          } else {
            controller.enqueue(value);
          }
        }
      } catch (e) {
        end();
        if (signal?.aborted) controller.error(signal.reason);
        else if (stalled) controller.error(stalledError());
        else if (e instanceof RegistryError) controller.error(e);
        else {
          controller.error(
            new RegistryError(
              "UNAVAILABLE",
              `connection to ${where} failed mid-body: ${networkReason(e)}`,
              { cause: e },
            ),
          );
        }
      } finally {
        clearTimeout(timer);
        timer = undefined;
      }
    },
    cancel(reason) {
      clearTimeout(timer);
      timer = undefined;
      end();
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}

/**
 * A short, credential-free reason for a network failure. Raw messages are not passed on: they
 * can contain full URLs (a redirect's presigned query string, for instance).
 */
function networkReason(error: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = error, depth = 0; e && depth < 5; depth++) {
    const record = e as { message?: unknown; code?: unknown; cause?: unknown };
    if (typeof record.message === "string") parts.push(record.message);
    if (typeof record.code === "string") parts.push(record.code);
    e = record.cause;
  }
  const text = parts.join(" ");
  // A port fetch refuses (config load rejects these; a client can still name one in `?ns=`).
  const blocked = /Requests to port (\d+) are blocked/.exec(text);
  if (blocked) return `port ${blocked[1]} is one that fetch refuses to connect to ("bad port")`;
  if (
    /certificate|UnknownIssuer|CaUsedAsEndEntity|self[- ]signed|CERT_|NotValidForName/i.test(text)
  ) {
    return "TLS certificate verification failed (accept_invalid_certs: true skips it for a configured upstream)";
  }
  if (/tls|handshake|ssl/i.test(text)) return "TLS handshake failed";
  if (/refused|ECONNREFUSED/i.test(text)) return "connection refused";
  if (/dns error|ENOTFOUND|EAI_AGAIN|failed to lookup|Name or service not known/i.test(text)) {
    return "DNS lookup failed";
  }
  if (/reset|ECONNRESET|broken pipe|EPIPE/i.test(text)) return "connection reset";
  if (/timed? ?out|ETIMEDOUT/i.test(text)) return "timed out";
  if (/unreachable|EHOSTUNREACH|ENETUNREACH/i.test(text)) return "host unreachable";
  if (/closed|incomplete|unexpected end|EOF/i.test(text)) return "connection closed unexpectedly";
  return "connection failed";
}
