/**
 * The HTTP front: routes OCI Distribution API paths to api/, adds the headers every response
 * carries, turns every error into an OCI JSON error (the only place that does), and writes one
 * access-log line per request.
 */
import { getBlob } from "./api/blobs.ts";
import { getManifest } from "./api/manifests.ts";
import { listTags } from "./api/tags.ts";
import type { Mirror } from "./cache/mirror.ts";
import { RegistryError } from "./oci/errors.ts";
import { resolveName } from "./oci/namespace.ts";
import type { Metrics } from "./metrics.ts";

export interface ServerOptions {
  mirror: Mirror;
  defaultNamespace: string;
  /** Request counters, and what GET /metrics renders. */
  metrics: Metrics;
  /** Access and error log sink (one line per call). */
  log?: (line: string) => void;
}

type Handler = (request: Request) => Promise<Response>;

const RESOURCE_PATH = /^\/v2\/(.+)\/(manifests|blobs|tags)\/(.+)$/;

export function createHandler(options: ServerOptions): Handler {
  const log = options.log ?? ((line) => console.log(line));
  const route = router(options);
  return async (request) => {
    const started = performance.now();
    let response: Response;
    try {
      response = await route(request);
    } catch (e) {
      response = errorResponse(e, request, log);
    }
    const url = new URL(request.url);
    if (url.pathname.startsWith("/v2")) {
      response.headers.set("docker-distribution-api-version", "registry/2.0");
    }
    options.metrics.requests.inc({
      method: request.method,
      endpoint: endpointOf(url.pathname),
      status: String(response.status),
    });
    const elapsed = (performance.now() - started).toFixed(1);
    log(
      `${request.method} ${url.pathname}${url.search} ${response.status} ${
        response.headers.get("content-length") ?? "-"
      } ${elapsed}ms`,
    );
    return response;
  };
}

function router(options: ServerOptions): Handler {
  const { mirror, defaultNamespace } = options;
  return async (request) => {
    const url = new URL(request.url);
    const path = url.pathname;
    const reading = request.method === "GET" || request.method === "HEAD";
    if (path === "/" || path === "/healthz") {
      if (!reading) throw unsupported(request);
      return new Response(request.method === "HEAD" ? null : "ok\n", {
        headers: { "content-type": "text/plain" },
      });
    }
    if (path === "/metrics") {
      if (!reading) throw unsupported(request);
      return new Response(request.method === "HEAD" ? null : options.metrics.render(), {
        headers: { "content-type": "text/plain; version=0.0.4" },
      });
    }
    if (path === "/v2" || path === "/v2/") {
      if (!reading) throw unsupported(request);
      return json({});
    }
    const match = RESOURCE_PATH.exec(path);
    if (!match) {
      throw new RegistryError("NAME_UNKNOWN", `no such endpoint: ${path}`, { status: 404 });
    }
    const [, pathName, kind, rest] = match;
    const name = resolveName(pathName, url.searchParams.get("ns"), defaultNamespace);
    if (kind === "blobs" && (rest === "uploads" || rest.startsWith("uploads/"))) {
      throw mirroredWrite(name.namespace);
    }
    if (!reading) throw mirroredWrite(name.namespace);
    const reference = decodeSegment(rest);
    switch (kind) {
      case "manifests":
        return await getManifest(mirror, name, reference, request);
      case "blobs":
        return await getBlob(mirror, name, reference, request);
      default:
        if (rest !== "list") {
          throw new RegistryError("NAME_UNKNOWN", `no such endpoint: ${path}`, { status: 404 });
        }
        return await listTags(mirror, name, pathName, url);
    }
  };
}

/** A low-cardinality name for what a path asks for, for metrics labels. */
function endpointOf(path: string): string {
  if (path === "/v2" || path === "/v2/") return "ping";
  const kind = RESOURCE_PATH.exec(path)?.[2];
  if (kind) return kind;
  return path === "/" || path === "/healthz" || path === "/metrics"
    ? path.slice(1) || "root"
    : "other";
}

/** Path segments may be percent-encoded (`sha256%3A...`); a bad escape is a bad reference. */
function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

function unsupported(request: Request): RegistryError {
  return new RegistryError("UNSUPPORTED", `${request.method} is not supported here`);
}

function mirroredWrite(namespace: string): RegistryError {
  return new RegistryError(
    "UNSUPPORTED",
    `${namespace} is a mirrored registry: it is read-only here; push to the upstream instead`,
  );
}

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

/** The single mapping from thrown errors to HTTP responses. */
export function errorResponse(e: unknown, request: Request, log: (line: string) => void): Response {
  const error = e instanceof RegistryError
    ? e
    : new RegistryError("UNKNOWN", "internal error", { cause: e });
  if (!(e instanceof RegistryError)) {
    log(
      `internal error on ${request.method} ${new URL(request.url).pathname}: ${
        (e as Error)?.stack ?? e
      }`,
    );
  }
  const body = request.method === "HEAD" ? null : JSON.stringify(error.toJSON());
  const headers = new Headers({ "content-type": "application/json", ...error.headers });
  return new Response(body, { status: error.status, headers });
}
