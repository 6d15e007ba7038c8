/**
 * Upstream configuration: the YAML file, UPSTREAM_CREDENTIALS, and the defaults that apply to
 * any namespace nobody configured. Problems are reported as ConfigError naming file and key.
 */
// @ts-types="npm:@types/js-yaml@^4"
import { load as parseYaml } from "js-yaml";
import { isRegistryHost, isUpstreamHost, parseImageName } from "../oci/reference.ts";
import type { LimitConfig } from "../upstream/limits.ts";

export interface UpstreamConfig {
  /** The registry name clients use, e.g. "docker.io" or "registry.k8s.io". */
  namespace: string;
  /** host[:port] of the registry actually contacted. */
  host: string;
  tls: boolean;
  acceptInvalidCerts: boolean;
  userAgent?: string;
  username?: string;
  password?: string;
  /** How long a cached tag is trusted before it is revalidated upstream. */
  manifestInvalidationMs: number;
  /** How long a cached blob is trusted before upstream is asked to confirm it again. */
  blobInvalidationMs: number;
  /**
   * Requests left in upstream's rate-limit window (`ratelimit-remaining`) at or below which
   * cached tags are served without revalidation, keeping the quota for what is not cached.
   * Default DEFAULT_RATE_LIMIT_RESERVE.
   */
  rateLimitReserve?: number;
  /** Which repositories and tags may be mirrored (mirror/filters.ts); absent: all. */
  filter?: FilterConfig;
  /**
   * With `hosts:` in the file, every endpoint in order (the first is also `host`, `tls`, ...
   * above); the client fails over from one to the next (upstream/endpoints.ts).
   */
  endpoints?: UpstreamEndpoint[];
  /** How long a failing endpoint is skipped before it is tried again (doubling while it fails). */
  failoverBackoffMs?: number;
  /**
   * Send `?ns=<namespace>` with every request: the upstream is itself a mirror (another
   * oci-registry, or any containerd-style mirror) serving several registries.
   */
  forwardNamespace?: boolean;
  /** Bounds on the requests sent to this upstream (upstream/limits.ts); absent: none. */
  limits?: LimitConfig;
  /** Images kept cached and refreshed every `warmIntervalMs` (mirror/warm.ts). */
  warm?: WarmImage[];
  warmIntervalMs?: number;
  /**
   * True when an operator named this upstream (file or credentials): such upstreams may live on
   * private addresses. Implicit upstreams (any namespace a client names) may not.
   */
  configured: boolean;
  /**
   * `auth: passthrough`: the client's own credentials must pass a check against this upstream
   * (http/passthrough.ts) before anything of the namespace is served to it, cached or not. The
   * configured credentials above still fetch the content.
   */
  auth?: "passthrough";
  /** How long a passed (or failed) pass-through check is remembered; default 60 s. */
  passthroughTtlMs?: number;
}

/** One image of a warm list. */
export interface WarmImage {
  repository: string;
  /** A tag or a digest. */
  reference: string;
  /** `os/architecture[/variant]` entries of an index to fetch; absent: every platform. */
  platforms?: string[];
}

/** One registry endpoint of a namespace with `hosts:`: where, and its own TLS and credentials. */
export interface UpstreamEndpoint {
  host: string;
  tls: boolean;
  acceptInvalidCerts: boolean;
  username?: string;
  password?: string;
}

/** Repository and tag patterns of one namespace (see mirror/filters.ts for their meaning). */
export interface FilterConfig {
  /** Repository globs that may be mirrored; absent: every repository. */
  repositories?: string[];
  /** Repository globs that never are (wins over `repositories`). */
  excludeRepositories?: string[];
  /** Tag globs that may be served; absent: every tag. */
  tags?: string[];
  /** Tag globs that never are. */
  excludeTags?: string[];
  /** Status of a refusal: 404 (default, says nothing) or 403 (says it is a policy). */
  refusalStatus?: 403 | 404;
}

export const DEFAULT_MANIFEST_INVALIDATION_MS = 60 * 60 * 1000; // 1h
export const DEFAULT_BLOB_INVALIDATION_MS = 30 * 24 * 60 * 60 * 1000; // 30d
export const DEFAULT_RATE_LIMIT_RESERVE = 10;

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

const DURATION_UNITS_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

/** Parses "0s", "90m", "12h", "14d", "1h30m" into milliseconds; a bare number means seconds. */
export function parseDuration(value: string | number): number {
  if (typeof value === "number" && Number.isFinite(value) && value >= 0) return value * 1000;
  const text = String(value).trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text) * 1000;
  const part = /(\d+(?:\.\d+)?)(ms|s|m|h|d|w)/y;
  let total = 0;
  let index = 0;
  while (index < text.length) {
    part.lastIndex = index;
    const match = part.exec(text);
    if (!match) {
      throw new ConfigError(
        `invalid duration ${JSON.stringify(value)} (use e.g. 0s, 90m, 12h, 14d)`,
      );
    }
    total += Number(match[1]) * DURATION_UNITS_MS[match[2]];
    index = part.lastIndex;
  }
  if (text.length === 0) throw new ConfigError("empty duration");
  return total;
}

/** Looks up the upstream for a namespace, falling back to the defaults for unknown ones. */
export class UpstreamRegistry {
  readonly #byNamespace = new Map<string, UpstreamConfig>();

  constructor(upstreams: UpstreamConfig[]) {
    for (const upstream of upstreams) this.#byNamespace.set(upstream.namespace, upstream);
  }

  get(namespace: string): UpstreamConfig {
    return this.#byNamespace.get(namespace) ?? defaultUpstream(namespace);
  }

  /** The explicitly configured upstreams (for logs and metrics). */
  configured(): UpstreamConfig[] {
    return [...this.#byNamespace.values()];
  }
}

export function defaultUpstream(namespace: string): UpstreamConfig {
  return {
    namespace,
    host: namespace === "docker.io" ? "registry-1.docker.io" : namespace,
    tls: true,
    acceptInvalidCerts: false,
    manifestInvalidationMs: DEFAULT_MANIFEST_INVALIDATION_MS,
    blobInvalidationMs: DEFAULT_BLOB_INVALIDATION_MS,
    configured: false,
  };
}

/**
 * The ports Deno's fetch refuses to connect to ("Requests to port N are blocked"): the WHATWG
 * fetch standard's "bad port" list. Probed on Deno 2.9.6 by fetching every port 1-65535 over
 * http and https: exactly these 82 fail that way, for both schemes.
 */
// deno-fmt-ignore
export const FETCH_BLOCKED_PORTS: ReadonlySet<number> = new Set([
  1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95, 101, 102,
  103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161, 179, 389, 427, 465,
  512, 513, 514, 515, 526, 530, 531, 532, 540, 548, 554, 556, 563, 587, 601, 636, 989, 990, 993,
  995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667, 6668,
  6669, 6679, 6697, 10080,
]);

/**
 * Why the mirror could never reach `host[:port]` (a port outside 1-65535, or one fetch refuses),
 * or undefined when it can. Checked at config load so that such an upstream is a clear start-up
 * error rather than a vague "connection failed" on every pull.
 */
export function unreachablePort(host: string): string | undefined {
  const match = /:(\d+)$/.exec(host);
  if (!match) return undefined;
  const port = Number(match[1]);
  if (port < 1 || port > 65535) return `port ${match[1]} is not a TCP port (1-65535)`;
  if (FETCH_BLOCKED_PORTS.has(port)) {
    return `port ${port} is one that fetch refuses to connect to (the WHATWG "bad port" list ` +
      `that browsers block); serve the upstream on another port`;
  }
  return undefined;
}

const KNOWN_KEYS = new Set([
  "namespace",
  "host",
  "tls",
  "accept_invalid_certs",
  "user_agent",
  "username",
  "password",
  "manifest_invalidation_time",
  "blob_invalidation_time",
  "rate_limit_reserve",
  "repositories",
  "exclude_repositories",
  "tags",
  "exclude_tags",
  "refusal_status",
  "hosts",
  "failover_backoff",
  "warm",
  "warm_interval",
  "forward_ns",
  "max_concurrent_requests",
  "max_requests_per_second",
  "queue_timeout",
  "auth",
  "passthrough_ttl",
]);
const ENDPOINT_KEYS = new Set(["host", "tls", "accept_invalid_certs", "username", "password"]);

/**
 * What the upstream file holds: its upstream entries, and the hosted namespaces it names
 * (`hosted:`, checked against the rest of the configuration by config/hosted.ts).
 */
export interface ConfigFile {
  upstreams: UpstreamConfig[];
  /** The file's `hosted:` list as written (empty when it has none). */
  hosted: string[];
}

const TOP_LEVEL_KEYS = new Set(["upstreams", "hosted"]);

/** The upstream entries of the file (either form, see parseConfigFile). */
export function parseUpstreamYaml(text: string, source: string): UpstreamConfig[] {
  return parseConfigFile(text, source).upstreams;
}

/**
 * Parses the upstream YAML. `source` names the file in messages. Two forms: a bare list of
 * upstream entries (the original's), or a mapping `{upstreams: [...], hosted: [...]}`.
 */
export function parseConfigFile(text: string, source: string): ConfigFile {
  let document: unknown;
  try {
    document = parseYaml(text);
  } catch (e) {
    throw new ConfigError(`${source}: invalid YAML: ${(e as Error).message.split("\n")[0]}`);
  }
  if (document === null || document === undefined) return { upstreams: [], hosted: [] };
  if (Array.isArray(document)) {
    return { upstreams: parseUpstreamList(document, source, ""), hosted: [] };
  }
  const expected = 'expected a list of upstream entries, or a mapping with "upstreams" and ' +
    '"hosted", at the top level';
  if (typeof document !== "object") throw new ConfigError(`${source}: ${expected}`);
  const record = document as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    if (!TOP_LEVEL_KEYS.has(key)) {
      throw new ConfigError(`${source}: unknown top-level key "${key}" (${expected})`);
    }
  }
  const list = record.upstreams ?? [];
  if (!Array.isArray(list)) {
    throw new ConfigError(`${source}: key "upstreams" must be a list of upstream entries`);
  }
  const upstreams = parseUpstreamList(list, source, "upstreams: ");
  const hosted = record.hosted ?? [];
  if (!Array.isArray(hosted) || hosted.some((name) => typeof name !== "string")) {
    throw new ConfigError(
      `${source}: key "hosted" must be a list of first path segments such as [myorg, internal]`,
    );
  }
  return { upstreams, hosted: hosted as string[] };
}

function parseUpstreamList(list: unknown[], source: string, prefix: string): UpstreamConfig[] {
  const seen = new Set<string>();
  return list.map((entry, index) => {
    const where = `${source}: ${prefix}entry ${index + 1}`;
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) {
      throw new ConfigError(`${where}: expected a mapping with at least namespace and host`);
    }
    const record = entry as Record<string, unknown>;
    for (const key of Object.keys(record)) {
      if (!KNOWN_KEYS.has(key)) throw new ConfigError(`${where}: unknown key "${key}"`);
    }
    const namespace = requiredString(record, "namespace", where);
    const upstream = parseEntry(record, `${where} (${namespace})`);
    if (seen.has(namespace)) throw new ConfigError(`${where}: namespace "${namespace}" repeated`);
    seen.add(namespace);
    return upstream;
  });
}

function parseEntry(record: Record<string, unknown>, where: string): UpstreamConfig {
  const namespace = requiredString(record, "namespace", where);
  if (!isRegistryHost(namespace)) {
    throw new ConfigError(`${where}: key "namespace" must be a registry host name, e.g. docker.io`);
  }
  if (record.host === undefined && record.hosts === undefined) {
    throw new ConfigError(`${where}: key "host" is required (or "hosts", a list for failover)`);
  }
  if (record.host !== undefined && record.hosts !== undefined) {
    throw new ConfigError(`${where}: keys "host" and "hosts" exclude each other`);
  }
  const entryDefaults: UpstreamEndpoint = {
    host: "",
    tls: optionalBoolean(record, "tls", where) ?? true,
    acceptInvalidCerts: optionalBoolean(record, "accept_invalid_certs", where) ?? false,
    username: optionalString(record, "username", where),
    password: optionalString(record, "password", where),
  };
  const endpoints = record.hosts === undefined
    ? undefined
    : parseEndpoints(record.hosts, entryDefaults, where);
  const first = endpoints?.[0] ??
    { ...entryDefaults, host: checkedHost(requiredString(record, "host", where), "host", where) };
  const rateLimitReserve = optionalCount(record, "rate_limit_reserve", where);
  const filter = parseFilter(record, where);
  const failoverBackoffMs = optionalDuration(record, "failover_backoff", where);
  const warm = record.warm === undefined ? undefined : parseWarm(record.warm, where);
  const warmIntervalMs = optionalDuration(record, "warm_interval", where);
  const forwardNamespace = optionalBoolean(record, "forward_ns", where);
  const limits = parseLimits(record, where);
  const auth = parseAuth(record, where);
  const passthroughTtlMs = optionalDuration(record, "passthrough_ttl", where);
  if (passthroughTtlMs !== undefined && auth === undefined) {
    throw new ConfigError(`${where}: key "passthrough_ttl" needs auth: passthrough`);
  }
  return {
    namespace,
    host: first.host,
    tls: first.tls,
    acceptInvalidCerts: first.acceptInvalidCerts,
    userAgent: optionalString(record, "user_agent", where),
    username: first.username,
    password: first.password,
    manifestInvalidationMs: optionalDuration(record, "manifest_invalidation_time", where) ??
      DEFAULT_MANIFEST_INVALIDATION_MS,
    blobInvalidationMs: optionalDuration(record, "blob_invalidation_time", where) ??
      DEFAULT_BLOB_INVALIDATION_MS,
    ...(rateLimitReserve === undefined ? {} : { rateLimitReserve }),
    ...(filter === undefined ? {} : { filter }),
    ...(endpoints === undefined ? {} : { endpoints }),
    ...(failoverBackoffMs === undefined ? {} : { failoverBackoffMs }),
    ...(warm === undefined ? {} : { warm }),
    ...(warmIntervalMs === undefined ? {} : { warmIntervalMs }),
    ...(forwardNamespace ? { forwardNamespace } : {}),
    ...(limits === undefined ? {} : { limits }),
    ...(auth === undefined ? {} : { auth }),
    ...(passthroughTtlMs === undefined ? {} : { passthroughTtlMs }),
    configured: true,
  };
}

/** `auth:` absent, or `passthrough` (the only mode there is besides the default). */
function parseAuth(record: Record<string, unknown>, where: string): "passthrough" | undefined {
  const value = record.auth;
  if (value === undefined || value === null) return undefined;
  if (value !== "passthrough") {
    throw new ConfigError(
      `${where}: key "auth" must be "passthrough" (or absent: the mirror's own access rules)`,
    );
  }
  return value;
}

/** `hosts:` as a list of `host[:port]` strings or mappings with their own TLS and credentials. */
function parseEndpoints(
  value: unknown,
  defaults: UpstreamEndpoint,
  where: string,
): UpstreamEndpoint[] {
  if (!Array.isArray(value) || value.length === 0) {
    throw new ConfigError(`${where}: key "hosts" must be a list of host[:port] or mappings`);
  }
  return value.map((item, index) => {
    const at = `${where}: hosts[${index}]`;
    if (typeof item === "string") return { ...defaults, host: checkedHost(item, "host", at) };
    if (typeof item !== "object" || item === null || Array.isArray(item)) {
      throw new ConfigError(`${at}: expected host[:port] or a mapping with a host`);
    }
    const record = item as Record<string, unknown>;
    for (const key of Object.keys(record)) {
      if (!ENDPOINT_KEYS.has(key)) throw new ConfigError(`${at}: unknown key "${key}"`);
    }
    const own = (key: string) => record[key] !== undefined;
    return {
      host: checkedHost(requiredString(record, "host", at), "host", at),
      tls: optionalBoolean(record, "tls", at) ?? defaults.tls,
      acceptInvalidCerts: optionalBoolean(record, "accept_invalid_certs", at) ??
        defaults.acceptInvalidCerts,
      // Credentials go together: a mapping that names either has its own pair.
      username: own("username") || own("password")
        ? optionalString(record, "username", at)
        : defaults.username,
      password: own("username") || own("password")
        ? optionalString(record, "password", at)
        : defaults.password,
    };
  });
}

/** The request bounds of an entry, or undefined when it sets none. */
function parseLimits(record: Record<string, unknown>, where: string): LimitConfig | undefined {
  const positive = (key: string) => {
    const value = optionalCount(record, key, where);
    if (value === 0) throw new ConfigError(`${where}: key "${key}" must be 1 or more`);
    return value;
  };
  const maxConcurrent = positive("max_concurrent_requests");
  const perSecond = positive("max_requests_per_second");
  const queueTimeoutMs = optionalDuration(record, "queue_timeout", where);
  if (maxConcurrent === undefined && perSecond === undefined) {
    if (queueTimeoutMs !== undefined) {
      throw new ConfigError(
        `${where}: key "queue_timeout" needs max_concurrent_requests or max_requests_per_second`,
      );
    }
    return undefined;
  }
  return {
    ...(maxConcurrent === undefined ? {} : { maxConcurrent }),
    ...(perSecond === undefined ? {} : { perSecond }),
    queueTimeoutMs: queueTimeoutMs ?? 10_000,
  };
}

/** `warm:` as `repository:tag`, `repository@digest`, or mappings `{image, platforms}`. */
function parseWarm(value: unknown, where: string): WarmImage[] {
  if (!Array.isArray(value)) {
    throw new ConfigError(
      `${where}: key "warm" must be a list of images such as library/alpine:3.19`,
    );
  }
  return value.map((item, index) => {
    const at = `${where}: warm[${index}]`;
    const record = typeof item === "string" ? { image: item } : item;
    if (typeof record !== "object" || record === null || typeof record.image !== "string") {
      throw new ConfigError(`${at}: expected an image, or a mapping with image and platforms`);
    }
    for (const key of Object.keys(record)) {
      if (key !== "image" && key !== "platforms") {
        throw new ConfigError(`${at}: unknown key "${key}"`);
      }
    }
    const platforms = record.platforms;
    if (
      platforms !== undefined &&
      (!Array.isArray(platforms) ||
        platforms.some((p) => typeof p !== "string" || !/^[a-z0-9]+\/[a-z0-9]+(\/\w+)?$/.test(p)))
    ) {
      throw new ConfigError(
        `${at}: key "platforms" must be a list such as [linux/amd64, linux/arm64/v8]`,
      );
    }
    let image: WarmImage;
    try {
      // Names here are repositories of this namespace: a placeholder host keeps them as they are.
      const { repository, reference } = parseImageName(`warm.invalid/${record.image}`);
      image = { repository, reference };
    } catch {
      throw new ConfigError(
        `${at}: ${JSON.stringify(record.image)} is not repository:tag or repository@digest`,
      );
    }
    return platforms === undefined ? image : { ...image, platforms: platforms as string[] };
  });
}

function checkedHost(host: string, key: string, where: string): string {
  const badPort = unreachablePort(host);
  if (badPort) throw new ConfigError(`${where}: key "${key}" (${host}): ${badPort}`);
  if (!isUpstreamHost(host)) {
    throw new ConfigError(`${where}: key "${key}" must be host[:port] without scheme or path`);
  }
  return host;
}

function requiredString(record: Record<string, unknown>, key: string, where: string): string {
  const value = record[key];
  if (typeof value !== "string" || value.length === 0) {
    throw new ConfigError(`${where}: key "${key}" is required and must be a string`);
  }
  return value;
}

function optionalString(
  record: Record<string, unknown>,
  key: string,
  where: string,
): string | undefined {
  const value = record[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string" && typeof value !== "number") {
    throw new ConfigError(`${where}: key "${key}" must be a string`);
  }
  return String(value);
}

function optionalBoolean(
  record: Record<string, unknown>,
  key: string,
  where: string,
): boolean | undefined {
  const value = record[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "boolean") {
    throw new ConfigError(`${where}: key "${key}" must be true or false`);
  }
  return value;
}

/** The filter keys of an entry, or undefined when it has none. */
function parseFilter(record: Record<string, unknown>, where: string): FilterConfig | undefined {
  const filter: FilterConfig = {};
  const lists = [
    ["repositories", "repositories"],
    ["exclude_repositories", "excludeRepositories"],
    ["tags", "tags"],
    ["exclude_tags", "excludeTags"],
  ] as const;
  for (const [key, field] of lists) {
    const value = record[key];
    if (value === undefined || value === null) continue;
    if (!Array.isArray(value) || value.some((v) => typeof v !== "string" || v === "")) {
      throw new ConfigError(
        `${where}: key "${key}" must be a list of patterns such as "library/*"`,
      );
    }
    filter[field] = value as string[];
  }
  const status = record.refusal_status;
  if (status !== undefined && status !== null) {
    if (status !== 403 && status !== 404) {
      throw new ConfigError(`${where}: key "refusal_status" must be 403 or 404`);
    }
    filter.refusalStatus = status;
  }
  return Object.keys(filter).length === 0 ? undefined : filter;
}

function optionalCount(
  record: Record<string, unknown>,
  key: string,
  where: string,
): number | undefined {
  const value = record[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new ConfigError(`${where}: key "${key}" must be a whole number, 0 or more`);
  }
  return value;
}

function optionalDuration(
  record: Record<string, unknown>,
  key: string,
  where: string,
): number | undefined {
  const value = record[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string" && typeof value !== "number") {
    throw new ConfigError(`${where}: key "${key}" must be a duration such as 90m or 14d`);
  }
  try {
    return parseDuration(value);
  } catch (e) {
    throw new ConfigError(`${where}: key "${key}": ${(e as Error).message}`);
  }
}

/**
 * Merges UPSTREAM_CREDENTIALS (`{"namespace": {"username": "..", "password": ".."}}`) over the
 * file's entries; a namespace only named there gets the default upstream with credentials.
 */
export function mergeCredentials(upstreams: UpstreamConfig[], json: string): UpstreamConfig[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (e) {
    // The message from JSON.parse can quote the input: never echo secrets.
    throw new ConfigError(
      `UPSTREAM_CREDENTIALS: invalid JSON (${
        (e as Error).name
      }); expected {"namespace": {"username": "...", "password": "..."}}`,
    );
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new ConfigError("UPSTREAM_CREDENTIALS: expected a JSON object keyed by namespace");
  }
  const result = new Map(upstreams.map((u) => [u.namespace, { ...u }]));
  for (const [namespace, value] of Object.entries(parsed)) {
    const where = `UPSTREAM_CREDENTIALS: namespace "${namespace}"`;
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      throw new ConfigError(`${where}: expected {"username": "...", "password": "..."}`);
    }
    const { username, password, ...rest } = value as Record<string, unknown>;
    if (Object.keys(rest).length > 0) {
      throw new ConfigError(`${where}: unknown key "${Object.keys(rest)[0]}"`);
    }
    if (typeof username !== "string" || typeof password !== "string") {
      throw new ConfigError(`${where}: "username" and "password" must both be strings`);
    }
    const base = result.get(namespace) ?? { ...defaultUpstream(namespace), configured: true };
    const badPort = unreachablePort(base.host);
    if (badPort) throw new ConfigError(`${where}: upstream ${base.host}: ${badPort}`);
    result.set(namespace, { ...base, username, password });
  }
  return [...result.values()];
}

/** The optional file and credentials variable: the upstreams, and the file's hosted list. */
export async function loadConfigFile(
  file: string | undefined,
  credentialsJson: string | undefined,
): Promise<{ upstreams: UpstreamRegistry; hosted: string[] }> {
  let parsed: ConfigFile = { upstreams: [], hosted: [] };
  if (file) {
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch (e) {
      throw new ConfigError(`${file}: cannot read upstream config file: ${(e as Error).message}`);
    }
    parsed = parseConfigFile(text, file);
  }
  let upstreams = parsed.upstreams;
  if (credentialsJson && credentialsJson.trim() !== "") {
    upstreams = mergeCredentials(upstreams, credentialsJson);
  }
  return { upstreams: new UpstreamRegistry(upstreams), hosted: parsed.hosted };
}
