/**
 * The cache's port to upstream registries: what it asks of them (src/upstream/client.ts
 * implements it), the wrapper that counts every request, and how the cache reads and judges
 * their answers (bounded bodies, which failures let cached content be served stale).
 */
import { concatBytes } from "../runtime/bytes.ts";
import type { UpstreamRegistry } from "../config/upstreams.ts";
import { type Metrics, OTHER } from "../runtime/metrics.ts";
import { isUnavailable, RegistryError } from "../oci/errors.ts";

/** What the cache needs from the upstream client (src/upstream/client.ts implements it). */
export interface Upstream {
  manifest(
    namespace: string,
    repository: string,
    reference: string,
    init: { method: "GET" | "HEAD"; accept: string[]; signal?: AbortSignal; retry?: boolean },
  ): Promise<Response>;
  blob(
    namespace: string,
    repository: string,
    digest: string,
    init: { method: "GET" | "HEAD"; signal?: AbortSignal; retry?: boolean; range?: string },
  ): Promise<Response>;
  tags(
    namespace: string,
    repository: string,
    query: URLSearchParams,
    signal?: AbortSignal,
  ): Promise<Response>;
  /** The referrers API; absent (or 404, MANIFEST_UNKNOWN) when upstream has none. */
  referrers?(
    namespace: string,
    repository: string,
    digest: string,
    signal?: AbortSignal,
  ): Promise<Response>;
  /**
   * True while the namespace's upstream has little rate-limit quota left (or asked not to be
   * called): what is cached is then served without asking it (see upstream/rate_limits.ts).
   */
  quotaLow?(namespace: string): boolean;
}

/**
 * Wraps the upstream so that every request made to it is counted. Only configured namespaces
 * are named (see Metrics.namespaceLabel): any registry a client names is mirrored, but must not
 * add a series.
 */
export function countingUpstream(
  upstream: Upstream,
  metrics: Metrics,
  upstreams: UpstreamRegistry,
): Upstream {
  metrics.nameNamespaces(upstreams.configured().map((u) => u.namespace));
  const count = <T>(namespace: string, kind: string, method: string, request: () => Promise<T>) => {
    const label = metrics.namespaceLabel(namespace);
    metrics.upstream.inc({ namespace: label, kind, method });
    const started = performance.now();
    return request().then((response) => {
      metrics.upstreamSeconds.inc({ namespace: label, kind }, (performance.now() - started) / 1000);
      return response;
    }, (e) => {
      // Codes come from the one register (oci/errors.ts): a bounded label.
      const code = e instanceof RegistryError ? e.code : OTHER;
      metrics.upstreamErrors.inc({ namespace: label, kind, code });
      throw e;
    });
  };
  return {
    manifest: (namespace, repository, reference, init) =>
      count(
        namespace,
        "manifest",
        init.method,
        () => upstream.manifest(namespace, repository, reference, init),
      ),
    blob: (namespace, repository, digest, init) =>
      count(
        namespace,
        "blob",
        init.method,
        () => upstream.blob(namespace, repository, digest, init),
      ),
    tags: (namespace, repository, query, signal) =>
      count(namespace, "tags", "GET", () => upstream.tags(namespace, repository, query, signal)),
    referrers: upstream.referrers && ((namespace, repository, digest, signal) =>
      count(
        namespace,
        "referrers",
        "GET",
        () => upstream.referrers!(namespace, repository, digest, signal),
      )),
    quotaLow: upstream.quotaLow?.bind(upstream),
  };
}

/** Upstream failures after which cached content is served rather than an error. */
export function servesStale(e: unknown): boolean {
  return isUnavailable(e) ||
    (e instanceof RegistryError && (e.code === "DENIED" || e.code === "UNAUTHORIZED"));
}

export function describe(e: unknown): string {
  return e instanceof RegistryError ? `${e.code}: ${e.message}` : String(e);
}

/**
 * A whole upstream body, refused once it is larger than `limit` bytes; `what` names it in the
 * error ("manifest 1", "tags of team/app").
 */
export async function readLimited(
  response: Response,
  limit: number,
  what: string,
): Promise<Uint8Array> {
  const length = Number(response.headers.get("content-length") ?? 0);
  if (length > limit) {
    await response.body?.cancel();
    throw new RegistryError(
      "UPSTREAM_ERROR",
      `upstream ${what} is larger than ${limit} bytes`,
    );
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of response.body ?? new ReadableStream<Uint8Array>()) {
    total += chunk.byteLength;
    if (total > limit) {
      throw new RegistryError(
        "UPSTREAM_ERROR",
        `upstream ${what} is larger than ${limit} bytes`,
      );
    }
    chunks.push(chunk);
  }
  return concatBytes(chunks, total);
}
