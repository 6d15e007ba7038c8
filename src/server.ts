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

/** What a path asks for; `endpoint` doubles as the (low-cardinality) metrics label. */
type Route =
  | { endpoint: "root" | "metrics" | "ping" | "other" }
  | { endpoint: "manifests" | "blobs" | "tags"; pathName: string; rest: string };

function routeOf(path: string): Route {
  if (path === "/") return { endpoint: "root" };
  if (path === "/metrics") return { endpoint: "metrics" };
  if (path === "/v2" || path === "/v2/") return { endpoint: "ping" };
  const match = RESOURCE_PATH.exec(path);
  if (!match) return { endpoint: "other" };
  return {
    endpoint: match[2] as "manifests" | "blobs" | "tags",
    pathName: match[1],
    rest: match[3],
  };
}

export function createHandler(options: ServerOptions): Handler {
  const log = options.log ?? ((line) => console.log(line));
  return async (request) => {
    const started = performance.now();
    const url = new URL(request.url);
    const route = routeOf(url.pathname);
    let response: Response;
    try {
      response = await dispatch(options, request, url, route);
    } catch (e) {
      response = errorResponse(e, request, log);
    }
    if (url.pathname.startsWith("/v2")) {
      response.headers.set("docker-distribution-api-version", "registry/2.0");
    }
    options.metrics.requests.inc({
      method: request.method,
      endpoint: route.endpoint,
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

async function dispatch(
  options: ServerOptions,
  request: Request,
  url: URL,
  route: Route,
): Promise<Response> {
  const reading = request.method === "GET" || request.method === "HEAD";
  switch (route.endpoint) {
    case "root":
      if (!reading) throw unsupported(request);
      return new Response(request.method === "HEAD" ? null : "ok\n", {
        headers: { "content-type": "text/plain" },
      });
    case "metrics":
      if (!reading) throw unsupported(request);
      return new Response(request.method === "HEAD" ? null : options.metrics.render(), {
        headers: { "content-type": "text/plain; version=0.0.4" },
      });
    case "ping":
      if (!reading) throw unsupported(request);
      return json({});
    case "other":
      throw noSuchEndpoint(url.pathname);
  }
  const { pathName, rest } = route;
  const name = resolveName(pathName, url.searchParams.get("ns"), options.defaultNamespace);
  if (!reading || (route.endpoint === "blobs" && /^uploads(\/|$)/.test(rest))) {
    throw mirroredWrite(name.namespace);
  }
  switch (route.endpoint) {
    case "manifests":
      return await getManifest(options.mirror, name, decodeSegment(rest), request);
    case "blobs":
      return await getBlob(options.mirror, name, decodeSegment(rest), request);
    case "tags":
      if (rest !== "list") throw noSuchEndpoint(url.pathname);
      return await listTags(options.mirror, name, pathName, url);
  }
}

function noSuchEndpoint(path: string): RegistryError {
  return new RegistryError("NAME_UNKNOWN", `no such endpoint: ${path}`, { status: 404 });
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
