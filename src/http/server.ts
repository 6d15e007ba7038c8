/**
 * The HTTP front: routes OCI Distribution API paths to api/, adds the headers every response
 * carries, turns every error into an OCI JSON error (the only place that does), and writes one
 * access-log line and counts one metric per request, whatever the request looks like.
 *
 * Routing reads the request target (path and query) only, never the Host header.
 *
 * What Deno.serve (2.9.6, hyper) rejects itself before this handler runs, measured over raw
 * sockets (src/server_test.ts): a request head over 64 KiB (request line plus headers), more
 * than 128 header lines, a repeated Host header, control bytes or non-ASCII bytes in the
 * request target, a malformed method, request target, version, header name, Content-Length or
 * chunk framing, and Content-Length with Transfer-Encoding. It answers each with a bare 400 (no
 * body, not 414 or 431), and none of them reaches the access log or /metrics. A chunked body
 * whose framing is invalid makes it drop the connection with no response at all, even after
 * the handler answered (tests/e2e/fuzz_test.ts meets both). Everything else
 * reaches the handler, including Host values such as `x/metrics#` or `a b`, absolute-form
 * targets (`GET http://other/metrics`, where request.url takes the target's authority), and
 * invented method tokens.
 */
import * as blobs from "./handlers/blobs.ts";
import { listCatalog, listReferrers, listTags } from "./handlers/listings.ts";
import * as manifests from "./handlers/manifests.ts";
import * as uploads from "./handlers/uploads.ts";
import type { Mirror } from "../mirror/mirror.ts";
import { mirroredName, MirroredRegistry } from "../mirror/mirrored_registry.ts";
import type { Action, Resource } from "../config/access.ts";
import { ANONYMOUS, type Auth } from "./auth.ts";
import type { ClientLimits } from "./client_limits.ts";
import {
  type AccessProbe,
  BASIC_CHALLENGE,
  decodeBasic,
  type PassthroughGate,
} from "./passthrough.ts";
import { RegistryError } from "../oci/errors.ts";
import { hostedName, type ResolvedName, resolveName } from "../oci/namespace.ts";
import type { Registry } from "../registry/registry.ts";
import { type AccessEntry, accessText, type LogFn } from "../runtime/log.ts";
import { renderStatusPage, type StatusSnapshot, wantsHtml } from "./status_page.ts";
import { methodLabel, type Metrics, statusLabel } from "../runtime/metrics.ts";
import { IN_PLACE_STREAMING, type Streaming } from "../runtime/streaming.ts";

export interface ServerOptions {
  mirror: Mirror;
  /** Hosted repositories: the content store that takes pushes. */
  registry?: Registry;
  /** First path segments whose repositories are hosted (never fetched upstream). */
  hosted?: string[];
  defaultNamespace: string;
  /** Request counters, and what GET /metrics renders. */
  metrics: Metrics;
  /** Error log sink (one line per call). */
  log?: LogFn;
  /** Access log: one entry per request; default a text line through `log`. */
  accessLog?: (entry: AccessEntry) => void;
  /** For GET /readyz: null when ready to serve, else why not (storage down, shutting down). */
  readiness?: () => Promise<string | null>;
  /** For browsers at GET /: the figures the status page shows. */
  status?: () => StatusSnapshot;
  /**
   * Client authentication and access rules (--auth-config). Without it every read is open, as
   * it always was, and hosted repositories take writes only with `allowAnonymousPush`.
   */
  auth?: Auth;
  /** --allow-anonymous-push: without `auth`, anyone may push to and delete from hosted names. */
  allowAnonymousPush?: boolean;
  /** --client-rate, --client-downloads: per-client limits (src/http/client_limits.ts). */
  limits?: ClientLimits;
  /** Namespaces with `auth: passthrough`: the client's upstream credentials decide. */
  passthrough?: PassthroughGate;
  /** Told of upload bodies as they arrive (GC pacing, runtime/streaming.ts); default nothing. */
  streaming?: Pick<Streaming, "streamed">;
}

type Handler = (request: Request, info?: Deno.ServeHandlerInfo) => Promise<Response>;

/**
 * Longest request target (path and query) served, below the 64 KiB head Deno.serve reads so
 * that clients get a 414 rather than its bare 400. Real requests stay far below: a repository
 * name is at most 255 bytes, a digest 71, a tags/list query a tag and a count.
 */
export const MAX_TARGET_BYTES = 8 << 10;
/** Most bytes of header names and values served (bearer tokens are a few KiB); 431 above. */
export const MAX_HEADER_BYTES = 32 << 10;
/** Longest target written to the access log as it is; longer ones are cut. */
const LOGGED_TARGET_CHARS = 512;

/**
 * A Host header as RFC 9110 allows it: a registered name (unreserved, sub-delims and
 * percent-encoded octets), an IPv4 address or a bracketed IPv6 literal, and an optional port.
 * Anything else (`x/metrics#`, `a b`, non-ASCII) is a malformed request.
 */
const HOST_HEADER =
  /^(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?$/;

/** What the handling of one request learnt that its access-log line should say. */
interface Seen {
  namespace?: string;
  /** The authenticated user (a name, never a credential). */
  user?: string;
}

/** What the request target asks for: its path and its query (without the "?"). */
interface Target {
  path: string;
  query: URLSearchParams;
}

const RESOURCE_PATH = /^\/v2\/(.+)\/(manifests|blobs|tags|referrers)\/(.+)$/;
const UPLOAD_PATH = /^uploads(?:\/([^/]*))?$/;

type Endpoint = "manifests" | "blobs" | "uploads" | "tags" | "referrers";

/** What a path asks for; `endpoint` doubles as the (low-cardinality) metrics label. */
type Route =
  | {
    endpoint: "root" | "healthz" | "readyz" | "metrics" | "ping" | "catalog" | "token" | "other";
  }
  | { endpoint: Endpoint; pathName: string; rest: string };

function routeOf(path: string): Route {
  if (path === "/") return { endpoint: "root" };
  if (path === "/healthz") return { endpoint: "healthz" };
  if (path === "/readyz") return { endpoint: "readyz" };
  if (path === "/metrics") return { endpoint: "metrics" };
  if (path === "/v2" || path === "/v2/") return { endpoint: "ping" };
  if (path === "/v2/_catalog") return { endpoint: "catalog" };
  if (path === "/token") return { endpoint: "token" };
  const match = RESOURCE_PATH.exec(path);
  if (!match) return { endpoint: "other" };
  const upload = match[2] === "blobs" ? UPLOAD_PATH.exec(match[3]) : null;
  if (upload) return { endpoint: "uploads", pathName: match[1], rest: upload[1] ?? "" };
  return { endpoint: match[2] as Endpoint, pathName: match[1], rest: match[3] };
}

export function createHandler(options: ServerOptions): Handler {
  const log: LogFn = options.log ?? ((line) => console.log(line));
  const accessLog = options.accessLog ?? ((entry) => log(accessText(entry)));
  options.metrics.nameNamespaces([options.defaultNamespace]);
  const hosted = new Set(options.hosted ?? []);
  const registries: Registries = {
    mirrored: new MirroredRegistry(options.mirror),
    hosted: options.registry,
    hostedNames: hosted,
    streamed: (options.streaming ?? IN_PLACE_STREAMING).streamed,
  };
  return async (request, info) => {
    const started = performance.now();
    const raw = rawTarget(request.url);
    let route: Route = { endpoint: "other" };
    const seen: Seen = {};
    let response: Response;
    try {
      const target = parseTarget(request, raw);
      route = routeOf(target.path);
      const address = clientAddress(info);
      response = await dispatch(
        options,
        registries,
        request,
        target,
        route,
        seen,
        address,
        info?.completed,
      );
    } catch (e) {
      response = errorResponse(e, request, log);
    }
    if (raw.startsWith("/v2")) {
      response.headers.set("docker-distribution-api-version", "registry/2.0");
    }
    options.metrics.requests.inc({
      method: methodLabel(request.method),
      endpoint: route.endpoint,
      status: statusLabel(response.status),
    });
    const length = response.headers.get("content-length");
    // What the mirror's cache did, as the response tells the client too.
    const cache = response.headers.get("x-cache") ?? undefined;
    if (route.endpoint === "blobs" && cache && length !== null && request.method === "GET") {
      const source = cache === "miss" ? "upstream" : "cache";
      options.metrics.servedBytes.inc({ source }, Number(length));
    }
    accessLog({
      method: request.method,
      target: loggable(raw),
      status: response.status,
      bytes: length === null ? null : Number(length),
      durationMs: performance.now() - started,
      ...seen,
      cache,
    });
    return response;
  };
}

/**
 * The request target (path and query) as the client sent it. Deno builds request.url as
 * scheme + authority + target, where the authority is the Host header as sent (`x/metrics#`
 * included), the absolute-form target's authority, or the listener's address; so this is only
 * the target once a present Host header has been checked (parseTarget) or when the authority
 * contains no "/". Never throws: it also names requests in logs that are rejected.
 */
function rawTarget(url: string): string {
  const scheme = url.indexOf("://");
  if (scheme < 0) return url;
  const slash = url.indexOf("/", scheme + 3);
  return slash < 0 ? "" : url.slice(slash);
}

/** The target to route, or a 400/414/431 for a request this server will not read further. */
function parseTarget(request: Request, raw: string): Target {
  const host = request.headers.get("host");
  if (host !== null && !HOST_HEADER.test(host)) {
    throw new RegistryError("BAD_REQUEST", "malformed Host header");
  }
  let headerBytes = 0;
  for (const [name, value] of request.headers) headerBytes += name.length + value.length;
  if (headerBytes > MAX_HEADER_BYTES) {
    throw new RegistryError(
      "HEADERS_TOO_LARGE",
      `request headers larger than ${MAX_HEADER_BYTES} bytes`,
    );
  }
  if (raw.length > MAX_TARGET_BYTES) {
    throw new RegistryError(
      "URI_TOO_LONG",
      `request target longer than ${MAX_TARGET_BYTES} bytes`,
    );
  }
  if (!raw.startsWith("/") || raw.includes("#")) {
    throw new RegistryError("BAD_REQUEST", "the request target must be a path and a query");
  }
  if (/%(?![0-9A-Fa-f]{2})/.test(raw)) {
    throw new RegistryError("BAD_REQUEST", "invalid percent-encoding in the request target");
  }
  const question = raw.indexOf("?");
  return question < 0
    ? { path: raw, query: new URLSearchParams() }
    : { path: raw.slice(0, question), query: new URLSearchParams(raw.slice(question + 1)) };
}

function loggable(target: string): string {
  return target.length <= LOGGED_TARGET_CHARS
    ? target
    : `${target.slice(0, LOGGED_TARGET_CHARS)}... (${target.length} bytes)`;
}

/** The client's address, as login backoff keys it. */
function clientAddress(info: Deno.ServeHandlerInfo | undefined): string {
  let addr: Deno.Addr | undefined;
  try {
    addr = info?.remoteAddr as Deno.Addr | undefined;
  } catch {
    // Deno's remoteAddr throws for connections on a Unix socket.
  }
  return addr && "hostname" in addr ? addr.hostname : "local";
}

/** What a request does to a repository, for the access rules. */
function actionOf(method: string, endpoint: Endpoint): Action {
  if (method === "GET" || method === "HEAD") return endpoint === "uploads" ? "push" : "pull";
  if (method === "DELETE" && endpoint !== "uploads") return "delete";
  return "push";
}

/** A hosted name as the rules see it: its first segment and the rest. */
function hostedResource(name: string): Resource {
  const slash = name.indexOf("/");
  return slash < 0
    ? { hosted: true, namespace: name, repository: "" }
    : { hosted: true, namespace: name.slice(0, slash), repository: name.slice(slash + 1) };
}

/** Where repository requests go: the hosted store, or the mirror for every other name. */
interface Registries {
  mirrored: Registry;
  hosted?: Registry;
  /** First path segments whose repositories are hosted. */
  hostedNames: ReadonlySet<string>;
  /** Told of upload bodies as they arrive (ServerOptions.streaming, or nothing). */
  streamed: Streaming["streamed"];
}

async function dispatch(
  options: ServerOptions,
  registries: Registries,
  request: Request,
  target: Target,
  route: Route,
  seen: Seen,
  address: string,
  sent: Promise<void> | undefined,
): Promise<Response> {
  const reading = request.method === "GET" || request.method === "HEAD";
  const auth = options.auth;
  const hosted = registries.hostedNames;
  switch (route.endpoint) {
    case "root":
      if (!reading) throw unsupported(request);
      if (options.status && wantsHtml(request)) {
        return new Response(
          request.method === "HEAD" ? null : renderStatusPage({
            ...options.status(),
            // Names of private repositories are for those the rules (or the upstream) allow.
            repositoriesHidden: options.auth !== undefined || options.passthrough?.active === true,
          }),
          {
            headers: {
              "content-type": "text/html; charset=utf-8",
              "cache-control": "no-store",
              // Nothing but this page's own inline style: no script, nothing from elsewhere.
              "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'",
            },
          },
        );
      }
      return plainText(request, "ok\n");
    case "healthz":
      if (!reading) throw unsupported(request);
      return plainText(request, "ok\n");
    case "readyz": {
      if (!reading) throw unsupported(request);
      const notReady = await options.readiness?.() ?? null;
      return plainText(request, notReady === null ? "ready\n" : `not ready: ${notReady}\n`, {
        status: notReady === null ? 200 : 503,
      });
    }
    case "metrics":
      if (!reading) throw unsupported(request);
      return new Response(request.method === "HEAD" ? null : options.metrics.render(), {
        headers: { "content-type": "text/plain; version=0.0.4" },
      });
    case "ping":
      if (!reading) throw unsupported(request);
      options.limits?.admit(`address:${address}`);
      if (auth) await auth.ping(request, address);
      else if (options.passthrough?.active) {
        await passthroughPing(request, address, options.passthrough);
      }
      return json({});
    case "token":
      if (!auth) throw noSuchEndpoint(target.path);
      if (!reading) throw unsupported(request);
      options.limits?.admit(`address:${address}`);
      return await auth.token(request, address, target.query, (name) => {
        const hostedRepository = registries.hosted ? hostedName(name, null, hosted) : null;
        if (hostedRepository !== null) return hostedResource(hostedRepository);
        return { hosted: false, ...resolveName(name, null, options.defaultNamespace) };
      });
    case "catalog": {
      if (!reading) throw unsupported(request);
      options.limits?.admit(`address:${address}`);
      if (!registries.hosted) return json({ repositories: [] });
      // Only the repositories this client may pull are named (a page may come out shorter).
      const identity = await auth?.identify(request, address);
      const visible = auth && identity
        ? (name: string) => auth.allows(identity, hostedResource(name), "pull")
        : undefined;
      return await listCatalog(registries.hosted, target.query, visible);
    }
    case "other":
      throw noSuchEndpoint(target.path);
  }
  const { pathName } = route;
  const hostedRepository = registries.hosted
    ? hostedName(pathName, target.query.get("ns"), hosted)
    : null;
  const action = actionOf(request.method, route.endpoint);
  // The registry that answers, and the repository's name there (also the token scope's).
  let registry: Registry;
  let scopeName: string;
  let resource: Resource;
  let mirrored: ResolvedName | undefined;
  if (hostedRepository !== null) {
    registry = registries.hosted!;
    scopeName = hostedRepository;
    seen.namespace = hostedRepository.split("/", 1)[0];
    resource = hostedResource(hostedRepository);
  } else {
    mirrored = resolveName(pathName, target.query.get("ns"), options.defaultNamespace);
    registry = registries.mirrored;
    scopeName = mirroredName(mirrored);
    seen.namespace = mirrored.namespace;
    resource = { hosted: false, ...mirrored };
  }
  // Who asks, their budget, their rights: all before any lookup, so that a refusal does not
  // depend on what the repository holds.
  let identity = ANONYMOUS;
  let client = `address:${address}`;
  if (mirrored && options.passthrough?.covers(mirrored.namespace)) {
    // The upstream is the authority here, not the mirror's rules (README, Pass-through).
    options.limits?.admit(client);
    // Writes are refused (405) by the mirrored registry, without asking upstream.
    if (reading && route.endpoint !== "uploads") {
      const user = await options.passthrough.admit(
        request,
        address,
        mirrored.namespace,
        mirrored.repository,
        probeOf(route.endpoint, decodeSegment(route.rest)),
        auth ? auth.challenge(request, `repository:${scopeName}:pull`) : BASIC_CHALLENGE,
      );
      if (user) seen.user = user;
    }
  } else {
    identity = auth
      ? await auth.identify(request, address, `repository:${scopeName}:pull`)
      : ANONYMOUS;
    if (identity.user) seen.user = identity.user;
    if (identity.user) client = `user:${identity.user}`;
    options.limits?.admit(client);
    if (auth) auth.require(identity, request, resource, action, scopeName);
  }
  if (!auth && hostedRepository !== null && action !== "pull" && !options.allowAnonymousPush) {
    await request.body?.cancel();
    throw new RegistryError(
      "DENIED",
      "hosted repositories take pushes and deletes only with --auth-config or --allow-anonymous-push",
    );
  }
  if (route.endpoint === "blobs" && request.method === "GET") {
    options.limits?.startDownload(client, sent);
  }
  // A mount reads its source: only from a hosted repository this client may pull.
  const mayMount = (from: string) => {
    if (!auth) return true;
    let source: string | null;
    try {
      source = hostedName(from, null, hosted);
    } catch {
      return false; // not a repository name: nothing to mount, a plain upload (202)
    }
    return source !== null && auth.allows(identity, hostedResource(source), "pull");
  };
  return await dispatchRepository(
    registry,
    scopeName,
    request,
    target,
    route,
    mayMount,
    registries.streamed,
  );
}

/** What a pass-through check asks upstream for a request to `endpoint`. */
function probeOf(endpoint: Endpoint, rest: string): AccessProbe {
  if (endpoint === "blobs") return { kind: "blob", digest: rest };
  if (endpoint === "tags") return { kind: "tags" };
  return { kind: "manifest", reference: rest };
}

/**
 * Every repository endpoint against a registry: the hosted store, or the mirror's (which
 * refuses writes with UNSUPPORTED).
 */
async function dispatchRepository(
  registry: Registry,
  name: string,
  request: Request,
  target: Target,
  route: { endpoint: Endpoint; pathName: string; rest: string },
  mayMount: (from: string) => boolean,
  streamed: Streaming["streamed"],
): Promise<Response> {
  const method = request.method === "HEAD" ? "GET" : request.method;
  const rest = decodeSegment(route.rest);
  let query = target.query;
  const mount = query.get("mount");
  if (mount !== null && !mayMount(query.get(FROM) ?? "")) {
    // Not mountable for this client: a plain upload, as if nothing could be mounted.
    query = new URLSearchParams(query);
    query.delete("mount");
    query.delete(FROM);
  }
  const refused = async () => {
    await request.body?.cancel();
    return unsupported(request);
  };
  switch (route.endpoint) {
    case "manifests":
      if (method === "GET") return await manifests.getManifest(registry, name, rest, request);
      if (method === "PUT") {
        return await manifests.putManifest(registry, name, rest, request, query);
      }
      if (method === "DELETE") return await manifests.deleteManifest(registry, name, rest);
      throw await refused();
    case "blobs":
      if (method === "GET") return await blobs.getBlob(registry, name, rest, request);
      if (method === "DELETE") return await blobs.deleteBlob(registry, name, rest);
      throw await refused();
    case "uploads":
      if (rest === "") {
        if (request.method === "POST") {
          return await uploads.startUpload(registry, name, request, query, streamed);
        }
        throw await refused();
      }
      if (method === "GET") return await uploads.uploadStatus(registry, name, rest);
      if (method === "PATCH") {
        return await uploads.patchUpload(registry, name, rest, request, streamed);
      }
      if (method === "PUT") {
        return await uploads.putUpload(registry, name, rest, request, query, streamed);
      }
      if (method === "DELETE") return await uploads.cancelUpload(registry, name, rest);
      throw await refused();
    case "tags":
      if (rest !== "list") throw noSuchEndpoint(target.path);
      if (method === "GET") {
        return await listTags(registry, name, query, `/v2/${route.pathName}/tags/list`);
      }
      throw await refused();
    case "referrers":
      if (method === "GET") return await listReferrers(registry, name, rest, query);
      throw await refused();
  }
}

/**
 * The mount source parameter. In backticks: tests/e2e/bundle_test.ts reads `from "..."` in the
 * bundle as an import specifier.
 */
const FROM = `from`;

function noSuchEndpoint(path: string): RegistryError {
  return new RegistryError("NAME_UNKNOWN", `no such endpoint: ${path}`, { status: 404 });
}

/** Path segments may be percent-encoded (`sha256%3A...`); escapes that are not UTF-8 are 400. */
function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new RegistryError("BAD_REQUEST", "invalid percent-encoding in the request target");
  }
}

function unsupported(request: Request): RegistryError {
  return new RegistryError("UNSUPPORTED", `${request.method} is not supported here`);
}

/** Probes and the root page: plain text, nothing for HEAD. */
function plainText(request: Request, text: string, init: { status?: number } = {}): Response {
  return new Response(request.method === "HEAD" ? null : text, {
    status: init.status ?? 200,
    headers: { "content-type": "text/plain" },
  });
}

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

/**
 * GET /v2/ with passthrough namespaces and no mirror users. Clients that were not challenged
 * here never send credentials (containers/image, dockerd), so it asks for them as a registry
 * with users does; a login (`docker login`) is checked against the passthrough upstream.
 * Other schemes than Basic are not credentials this mirror reads: anonymous.
 */
async function passthroughPing(
  request: Request,
  address: string,
  gate: PassthroughGate,
): Promise<void> {
  const header = request.headers.get("authorization");
  const basic = header === null ? null : /^basic +([^ ]*) *$/i.exec(header);
  if (header !== null && !basic) return;
  const credentials = basic ? decodeBasic(basic[1]) : null;
  if (credentials && await gate.login(credentials, address)) return;
  throw new RegistryError(
    "UNAUTHORIZED",
    header === null
      ? "authentication required"
      : credentials
      ? "the passthrough upstream did not accept these credentials"
      : "malformed credentials",
    { headers: BASIC_CHALLENGE },
  );
}

/** The single mapping from thrown errors to HTTP responses. */
export function errorResponse(e: unknown, request: Request, log: LogFn): Response {
  const error = e instanceof RegistryError
    ? e
    : new RegistryError("UNKNOWN", "internal error", { cause: e });
  if (!(e instanceof RegistryError)) {
    log(
      `internal error on ${request.method} ${loggable(rawTarget(request.url))}: ${
        (e as Error)?.stack ?? e
      }`,
      "error",
    );
  }
  const body = request.method === "HEAD" ? null : JSON.stringify(error.toJSON());
  const headers = new Headers({ "content-type": "application/json", ...error.headers });
  return new Response(body, { status: error.status, headers });
}
