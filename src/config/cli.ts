/**
 * Command line, compatible with the original oci-registry:
 *   oci-registry [global flags] filesystem --root DIR
 *   oci-registry [global flags] s3 --bucket B [--endpoint URL] [--region R] ...
 * Every flag can also come from an environment variable; a flag wins over its variable.
 */
import { ConfigError, parseDuration } from "./upstreams.ts";
import { checkHostedNames } from "./hosted.ts";
import { parseSizeBound, type SizeBound } from "./size.ts";
import type { ClientLimitSettings } from "../http/client_limits.ts";
import type { UpstreamPolicy } from "../mirror/filters.ts";
import type { ConnectionLimits } from "../http/connections.ts";
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from "../runtime/log.ts";

interface FlagSpec {
  name: string;
  env: string;
  help: string;
  boolean?: boolean;
  default?: string;
}

const GLOBAL_FLAGS: FlagSpec[] = [
  {
    name: "listen",
    env: "LISTEN",
    default: "0.0.0.0:8080",
    help: "HOST:PORT or unix:/path/to/socket",
  },
  {
    name: "default-namespace",
    env: "DEFAULT_NAMESPACE",
    default: "docker.io",
    help: "registry for requests that name none",
  },
  {
    name: "hosted",
    env: "HOSTED",
    help: "comma-separated first path segments hosted here (push allowed, never fetched upstream)",
  },
  {
    name: "sparse-manifests",
    env: "SPARSE_MANIFESTS",
    boolean: true,
    help: "hosted: accept manifests whose layers or child manifests are not pushed (yet)",
  },
  {
    name: "upload-expiry",
    env: "UPLOAD_EXPIRY",
    default: "24h",
    help: "remove an upload session untouched this long",
  },
  {
    name: "upstream-config-file",
    env: "UPSTREAM_CONFIG_FILE",
    help: "YAML: upstream registries, and optionally hosted namespaces (see README)",
  },
  {
    name: "auth-config",
    env: "AUTH_CONFIG",
    help: "YAML: htpasswd users, groups and access rules (see README, Authentication)",
  },
  {
    name: "allow-anonymous-push",
    env: "ALLOW_ANONYMOUS_PUSH",
    boolean: true,
    help: "without --auth-config: let anyone push to and delete from hosted repositories",
  },
  {
    name: "client-rate",
    env: "CLIENT_RATE",
    help: "requests per second per client (user, else address); over it 429 (default: no limit)",
  },
  {
    name: "client-downloads",
    env: "CLIENT_DOWNLOADS",
    help: "blob downloads at once per client; over it 429 (default: no limit)",
  },
  {
    name: "allow-private-upstreams",
    env: "ALLOW_PRIVATE_UPSTREAMS",
    boolean: true,
    help: "let clients name upstreams on loopback/private addresses (configured ones always may)",
  },
  {
    name: "upstream-policy",
    env: "UPSTREAM_POLICY",
    default: "any",
    help: "any: mirror every registry a client names; configured: only those in the upstream file",
  },
  {
    name: "max-connections",
    env: "MAX_CONNECTIONS",
    help: "connections (and requests in progress) at once; default: half the descriptor limit",
  },
  {
    name: "header-timeout",
    env: "HEADER_TIMEOUT",
    default: "10s",
    help: "close a connection that has not sent a complete request head by then",
  },
  {
    name: "idle-timeout",
    env: "IDLE_TIMEOUT",
    default: "60s",
    help: "close a keep-alive connection idle this long between requests",
  },
  {
    name: "log-format",
    env: "LOG_FORMAT",
    default: "text",
    help: "text, or json: one JSON object per line (messages and the access log)",
  },
  {
    name: "log-level",
    env: "LOG_LEVEL",
    default: "info",
    help: "debug, info (includes the access log), warn or error",
  },
  {
    name: "shutdown-grace",
    env: "SHUTDOWN_GRACE",
    default: "25s",
    help: "on SIGTERM, how long requests and downloads in flight may take to finish",
  },
  {
    name: "max-cache-size",
    env: "MAX_CACHE_SIZE",
    help:
      "evict least recently used mirrored images past this size: 50GiB, 1e9 bytes, or 80% (filesystem)",
  },
  {
    name: "eviction-grace",
    env: "EVICTION_GRACE",
    default: "1m",
    help: "never evict what was read this recently (a client may still be pulling its parts)",
  },
  {
    name: "gc-interval",
    env: "GC_INTERVAL",
    default: "0s",
    help: "run garbage collection this often (0s: never; see the gc subcommand)",
  },
  {
    name: "unguarded-connections",
    env: "UNGUARDED_CONNECTIONS",
    boolean: true,
    help: "plain Deno.serve: no timeouts or cap (only behind a proxy that enforces them)",
  },
];

const STORAGE_FLAGS: Record<string, FlagSpec[]> = {
  filesystem: [{ name: "root", env: "FILESYSTEM_ROOT", help: "directory holding the cache" }],
  s3: [
    { name: "bucket", env: "S3_BUCKET", help: "bucket name" },
    {
      name: "endpoint",
      env: "S3_HOST",
      help: "endpoint URL for S3-compatible services (path-style)",
    },
    { name: "region", env: "S3_REGION", default: "us-east-1", help: "region" },
    { name: "prefix", env: "S3_PREFIX", default: "", help: "key prefix inside the bucket" },
    {
      name: "access-key",
      env: "S3_ACCESS_KEY",
      help: "access key id (else the AWS credential chain)",
    },
    { name: "secret-key", env: "S3_SECRET_KEY", help: "secret access key" },
    {
      name: "s3-redirect",
      env: "S3_REDIRECT",
      boolean: true,
      help: "answer blob GETs with a 307 to a presigned URL",
    },
    {
      name: "spool-dir",
      env: "SPOOL_DIR",
      help: "local directory for downloads in flight (default: a temp dir)",
    },
  ],
};

export type StorageSettings =
  | { kind: "filesystem"; root: string }
  | {
    kind: "s3";
    bucket: string;
    endpoint?: string;
    region: string;
    prefix: string;
    accessKeyId?: string;
    secretAccessKey?: string;
    redirect: boolean;
    spoolDir?: string;
  };

export interface Settings {
  listen: { kind: "tcp"; hostname: string; port: number } | { kind: "unix"; path: string };
  defaultNamespace: string;
  /**
   * First path segments whose repositories are hosted (src/registry/local.ts): from --hosted
   * here; main.ts adds the upstream file's `hosted:` (config/hosted.ts).
   */
  hosted: string[];
  uploadExpiryMs: number;
  /** Hosted: accept manifests whose layers or child manifests are absent. */
  sparseManifests: boolean;
  upstreamConfigFile?: string;
  /** Users and access rules (src/config/access.ts); absent: reads open, hosted writes closed. */
  authConfigFile?: string;
  /** Without an auth config, hosted repositories take writes from anyone. */
  allowAnonymousPush: boolean;
  /** Per-client request rate and concurrent downloads (src/http/client_limits.ts). */
  clientLimits: ClientLimitSettings;
  allowPrivateUpstreams: boolean;
  upstreamPolicy: UpstreamPolicy;
  connections: ConnectionLimits;
  /** Serve without the connection guard (src/http/connections.ts `listenUnguarded`). */
  unguardedConnections: boolean;
  /** How long a SIGTERM waits for requests and downloads in flight. */
  shutdownGraceMs: number;
  logFormat: LogFormat;
  logLevel: LogLevel;
  /** Periodic garbage collection (registry/gc.ts); 0: only by the gc subcommand. */
  gcIntervalMs: number;
  /** The cache size bound (mirror/bound.ts); absent: the cache only grows. */
  maxCacheSize?: SizeBound;
  evictionGraceMs: number;
  storage: StorageSettings;
}

export type CliResult =
  | { kind: "run"; settings: Settings }
  | { kind: "gc"; settings: Settings; delete: boolean; minAgeMs: number }
  | { kind: "help"; text: string }
  | { kind: "version" }
  | { kind: "warm"; mirror: string; platforms?: string[]; images: string[] };

/** Flags of `oci-registry gc`, given with the global flags. */
const GC_FLAGS: FlagSpec[] = [
  {
    name: "delete",
    env: "GC_DELETE",
    boolean: true,
    help: "gc: remove what is found (default: a dry run that only lists it)",
  },
  {
    name: "min-age",
    env: "GC_MIN_AGE",
    default: "1h",
    help: "gc: never remove anything younger (other replicas may be writing it)",
  },
];

export function usage(): string {
  const describe = (flags: FlagSpec[]) =>
    flags.map((f) =>
      `  --${f.name}${f.boolean ? "" : " VALUE"}`.padEnd(34) +
      `${f.help} [env ${f.env}${f.default ? `, default ${f.default || '""'}` : ""}]`
    ).join("\n");
  return [
    "oci-registry: a pull-through caching OCI registry mirror",
    "",
    "usage: oci-registry [global flags] filesystem --root DIR",
    "       oci-registry [global flags] s3 --bucket BUCKET [s3 flags]",
    "       oci-registry gc [--delete] [--min-age D] [global flags] filesystem|s3 ...",
    "",
    "global flags:",
    describe(GLOBAL_FLAGS),
    "",
    "gc flags:",
    describe(GC_FLAGS),
    "",
    "filesystem flags:",
    describe(STORAGE_FLAGS.filesystem),
    "",
    "s3 flags:",
    describe(STORAGE_FLAGS.s3),
    "",
    "Upstream credentials may also come from UPSTREAM_CREDENTIALS as JSON:",
    '  {"docker.io": {"username": "...", "password": "..."}}',
  ].join("\n");
}

/** Parses argv and the environment; throws ConfigError with a message for the user. */
export function parseCommandLine(
  args: string[],
  env: (name: string) => string | undefined,
): CliResult {
  if (args[0] === "warm") return parseWarmCommand(args.slice(1), env);
  if (args.includes("--help") || args.includes("-h")) return { kind: "help", text: usage() };
  if (args.includes("--version") || args.includes("-V")) return { kind: "version" };
  const gc = args[0] === "gc";
  if (gc) args = args.slice(1);
  const subcommandAt = args.findIndex((arg) => arg in STORAGE_FLAGS);
  if (subcommandAt === -1) {
    throw new ConfigError("missing storage subcommand: filesystem or s3 (see --help)");
  }
  const global = parseFlags(
    args.slice(0, subcommandAt),
    gc ? [...GLOBAL_FLAGS, ...GC_FLAGS] : GLOBAL_FLAGS,
    env,
    "",
  );
  const kind = args[subcommandAt] as "filesystem" | "s3";
  const local = parseFlags(args.slice(subcommandAt + 1), STORAGE_FLAGS[kind], env, kind);
  const authConfigFile = global["auth-config"] || undefined;
  const allowAnonymousPush = global["allow-anonymous-push"] === "true";
  if (authConfigFile && allowAnonymousPush) {
    throw new ConfigError(
      "--allow-anonymous-push and --auth-config exclude each other: with an auth config, grant anonymous pushes in a rule",
    );
  }
  const settings: Settings = {
    listen: parseListen(global.listen!),
    defaultNamespace: global["default-namespace"]!,
    hosted: hostedNamespaces(global.hosted, global["default-namespace"]!),
    uploadExpiryMs: duration(global, "upload-expiry"),
    sparseManifests: global["sparse-manifests"] === "true",
    upstreamConfigFile: global["upstream-config-file"] || undefined,
    authConfigFile,
    allowAnonymousPush,
    clientLimits: {
      rate: positiveNumber(global, "client-rate", false),
      downloads: positiveNumber(global, "client-downloads", true),
    },
    allowPrivateUpstreams: global["allow-private-upstreams"] === "true",
    upstreamPolicy: oneOf(global, "upstream-policy", ["any", "configured"] as const),
    connections: connectionLimits(global),
    unguardedConnections: global["unguarded-connections"] === "true",
    shutdownGraceMs: duration(global, "shutdown-grace", { allowZero: true }),
    logFormat: oneOf(global, "log-format", LOG_FORMATS),
    logLevel: oneOf(global, "log-level", LOG_LEVELS),
    maxCacheSize: cacheSize(global["max-cache-size"], kind),
    evictionGraceMs: duration(global, "eviction-grace", { allowZero: true }),
    gcIntervalMs: duration(global, "gc-interval", { allowZero: true }),
    storage: kind === "filesystem" ? filesystemSettings(local) : s3Settings(local),
  };
  if (!gc) return { kind: "run", settings };
  return {
    kind: "gc",
    settings,
    delete: global.delete === "true",
    minAgeMs: duration(global, "min-age", { allowZero: true }),
  };
}

/**
 * `myorg,internal`: each a valid first component of a repository name, lower case. The upstream
 * file's `hosted:` adds to these (config/hosted.ts, once the file is read).
 */
function hostedNamespaces(value: string | undefined, defaultNamespace: string): string[] {
  if (value === undefined || value.trim() === "") return [];
  const names = value.split(",").map((name) => name.trim()).filter((name) => name !== "");
  return checkHostedNames(names, "--hosted", defaultNamespace);
}

function cacheSize(value: string | undefined, kind: string): SizeBound | undefined {
  if (value === undefined || value.trim() === "") return undefined;
  const bound = parseSizeBound(value, "--max-cache-size");
  if ("percent" in bound && kind !== "filesystem") {
    throw new ConfigError("--max-cache-size: a percentage needs filesystem storage; give bytes");
  }
  return bound;
}

/** An optional flag that must be a number above 0 (a whole one when `integer`). */
function positiveNumber(
  flags: Record<string, string | undefined>,
  name: string,
  integer: boolean,
): number | undefined {
  const value = flags[name];
  if (value === undefined || value === "") return undefined;
  const pattern = integer ? /^\d+$/ : /^\d+(?:\.\d+)?$/;
  if (!pattern.test(value) || Number(value) <= 0) {
    throw new ConfigError(
      `--${name}: expected a positive ${integer ? "whole " : ""}number, got "${value}"`,
    );
  }
  return Number(value);
}

/** A flag whose value must be one of `choices`. */
function oneOf<T extends string>(
  flags: Record<string, string | undefined>,
  name: string,
  choices: readonly T[],
): T {
  const value = flags[name]!;
  if (!(choices as readonly string[]).includes(value)) {
    throw new ConfigError(`--${name}: expected ${choices.join(", ")}; got "${value}"`);
  }
  return value as T;
}

/** A duration flag in milliseconds; errors name the flag. */
function duration(
  flags: Record<string, string | undefined>,
  name: string,
  { allowZero = false } = {},
): number {
  let ms: number;
  try {
    ms = parseDuration(flags[name]!);
  } catch (e) {
    throw new ConfigError(`--${name}: ${(e as Error).message}`);
  }
  if (ms <= 0 && !allowZero) throw new ConfigError(`--${name} must be longer than 0s`);
  return ms;
}

function connectionLimits(flags: Record<string, string | undefined>): ConnectionLimits {
  let maxConnections: number | undefined;
  const max = flags["max-connections"];
  if (max !== undefined && max !== "") {
    if (!/^\d+$/.test(max) || Number(max) < 1) {
      throw new ConfigError(`--max-connections: expected a positive number, got "${max}"`);
    }
    maxConnections = Number(max);
  }
  return {
    maxConnections,
    headerTimeoutMs: duration(flags, "header-timeout"),
    idleTimeoutMs: duration(flags, "idle-timeout"),
  };
}

const WARM_USAGE = [
  "usage: oci-registry warm [--mirror URL] [--platform OS/ARCH]... IMAGE...",
  "",
  "Pulls each IMAGE (e.g. registry.k8s.io/pause:3.9, alpine:3.19, ghcr.io/o/app@sha256:...)",
  "through a running mirror so that it is cached, and prints a line per image.",
  "  --mirror URL          the mirror [env MIRROR_URL, default http://127.0.0.1:8080]",
  "  --platform OS/ARCH    only these platforms of a multi-platform image (repeatable; default all)",
].join("\n");

function parseWarmCommand(
  args: string[],
  env: (name: string) => string | undefined,
): CliResult {
  if (args.includes("--help") || args.includes("-h")) return { kind: "help", text: WARM_USAGE };
  let mirror = env("MIRROR_URL") || "http://127.0.0.1:8080";
  const platforms: string[] = [];
  const images: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const [flag, inline] = args[i].split(/=(.*)/s, 2);
    if (flag === "--mirror" || flag === "--platform") {
      const value = inline ?? args[++i];
      if (value === undefined) throw new ConfigError(`warm: ${flag} needs a value`);
      if (flag === "--mirror") mirror = value;
      else if (!/^[a-z0-9]+\/[a-z0-9]+(\/\w+)?$/.test(value)) {
        throw new ConfigError(`warm: --platform expects os/arch[/variant], got "${value}"`);
      } else platforms.push(value);
    } else if (flag.startsWith("--")) {
      throw new ConfigError(`warm: unknown flag ${flag} (see oci-registry warm --help)`);
    } else images.push(args[i]);
  }
  try {
    if (!/^https?:$/.test(new URL(mirror).protocol)) throw new Error();
  } catch {
    throw new ConfigError(`warm: --mirror must be an http(s) URL, got "${mirror}"`);
  }
  if (images.length === 0) throw new ConfigError("warm: name at least one image (see --help)");
  return { kind: "warm", mirror, platforms: platforms.length ? platforms : undefined, images };
}

function filesystemSettings(flags: Record<string, string | undefined>): StorageSettings {
  if (!flags.root) throw new ConfigError("filesystem: --root DIR (or FILESYSTEM_ROOT) is required");
  return { kind: "filesystem", root: flags.root };
}

function s3Settings(flags: Record<string, string | undefined>): StorageSettings {
  if (!flags.bucket) throw new ConfigError("s3: --bucket NAME (or S3_BUCKET) is required");
  if (!!flags["access-key"] !== !!flags["secret-key"]) {
    throw new ConfigError("s3: --access-key and --secret-key go together");
  }
  if (flags.endpoint) {
    try {
      new URL(flags.endpoint);
    } catch {
      throw new ConfigError(`s3: --endpoint must be a URL such as http://127.0.0.1:9000`);
    }
  }
  return {
    kind: "s3",
    bucket: flags.bucket,
    endpoint: flags.endpoint || undefined,
    region: flags.region || "us-east-1",
    prefix: flags.prefix ?? "",
    accessKeyId: flags["access-key"] || undefined,
    secretAccessKey: flags["secret-key"] || undefined,
    redirect: flags["s3-redirect"] === "true",
    spoolDir: flags["spool-dir"] || undefined,
  };
}

function parseFlags(
  args: string[],
  specs: FlagSpec[],
  env: (name: string) => string | undefined,
  context: string,
): Record<string, string | undefined> {
  const where = context ? `${context}: ` : "";
  const values: Record<string, string | undefined> = {};
  for (const spec of specs) {
    const fromEnv = env(spec.env);
    values[spec.name] = spec.boolean
      ? String(parseBoolean(fromEnv, spec.env))
      : fromEnv ?? spec.default;
  }
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (!arg.startsWith("--")) {
      throw new ConfigError(`${where}unexpected argument "${arg}" (see --help)`);
    }
    const [name, inline] = arg.slice(2).split(/=(.*)/s, 2);
    const spec = specs.find((s) => s.name === name) ??
      (name === "port" && context === "" ? { name: "port", env: "", help: "" } : undefined);
    if (!spec) throw new ConfigError(`${where}unknown flag --${name} (see --help)`);
    if (spec.boolean) {
      values[spec.name] = String(inline === undefined ? true : parseBoolean(inline, `--${name}`));
      continue;
    }
    const value = inline ?? args[++i];
    if (value === undefined) throw new ConfigError(`${where}--${name} needs a value`);
    if (spec.name === "port") values.listen = `0.0.0.0:${value}`; // the original's older flag
    else values[spec.name] = value;
  }
  return values;
}

function parseBoolean(value: string | undefined, where: string): boolean {
  if (value === undefined || value === "") return false;
  if (/^(1|true|yes|on)$/i.test(value)) return true;
  if (/^(0|false|no|off)$/i.test(value)) return false;
  throw new ConfigError(`${where}: expected true or false, got "${value}"`);
}

export function parseListen(value: string): Settings["listen"] {
  if (value.startsWith("unix:")) {
    const path = value.slice(5);
    if (!path) throw new ConfigError("--listen unix: needs a socket path");
    return { kind: "unix", path };
  }
  const match = /^(?:\[([0-9a-fA-F:]+)\]|([^:]*)):(\d{1,5})$/.exec(value);
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535) {
    throw new ConfigError(`--listen: expected HOST:PORT or unix:/path, got "${value}"`);
  }
  return { kind: "tcp", hostname: match[1] ?? (match[2] || "0.0.0.0"), port };
}
