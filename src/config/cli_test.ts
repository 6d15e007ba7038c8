import { assertEquals, assertThrows } from "../../tests/support/assert.ts";
import { parseCommandLine, type Settings } from "./cli.ts";
import { ConfigError } from "./upstreams.ts";

const noEnv = () => undefined;

function settings(args: string[], env: Record<string, string> = {}): Settings {
  const result = parseCommandLine(args, (name) => env[name]);
  if (result.kind !== "run") throw new Error(`expected run, got ${result.kind}`);
  return result.settings;
}

Deno.test("the original's command line", () => {
  const s = settings(["--listen", "0.0.0.0:8080", "filesystem", "--root", "/tmp/x"]);
  assertEquals(s.listen, { kind: "tcp", hostname: "0.0.0.0", port: 8080 });
  assertEquals(s.storage, { kind: "filesystem", root: "/tmp/x" });
  assertEquals(s.defaultNamespace, "docker.io");
  assertEquals(settings(["--port", "5000", "filesystem", "--root", "d"]).listen, {
    kind: "tcp",
    hostname: "0.0.0.0",
    port: 5000,
  });
});

Deno.test("every flag from its environment variable; flags win", () => {
  const env = {
    LISTEN: "127.0.0.1:9000",
    DEFAULT_NAMESPACE: "quay.io",
    UPSTREAM_CONFIG_FILE: "up.yaml",
    FILESYSTEM_ROOT: "/var/cache/oci",
  };
  const s = settings(["filesystem"], env);
  assertEquals(s.listen, { kind: "tcp", hostname: "127.0.0.1", port: 9000 });
  assertEquals(s.defaultNamespace, "quay.io");
  assertEquals(s.upstreamConfigFile, "up.yaml");
  assertEquals(s.storage, { kind: "filesystem", root: "/var/cache/oci" });
  assertEquals(settings(["--listen=[::1]:7000", "filesystem"], env).listen, {
    kind: "tcp",
    hostname: "::1",
    port: 7000,
  });
});

Deno.test("s3 flags and the original's env names", () => {
  const s = settings(["s3", "--s3-redirect"], {
    S3_BUCKET: "cache",
    S3_HOST: "http://127.0.0.1:9000",
    S3_ACCESS_KEY: "k",
    S3_SECRET_KEY: "s",
  });
  assertEquals(s.storage, {
    kind: "s3",
    bucket: "cache",
    endpoint: "http://127.0.0.1:9000",
    region: "us-east-1",
    prefix: "",
    accessKeyId: "k",
    secretAccessKey: "s",
    redirect: true,
    spoolDir: undefined,
  });
});

Deno.test("unix socket listener", () => {
  assertEquals(settings(["--listen", "unix:/run/oci.sock", "filesystem", "--root", "d"]).listen, {
    kind: "unix",
    path: "/run/oci.sock",
  });
});

Deno.test("mistakes are ConfigErrors that say what is wrong", () => {
  const cases: [string[], string][] = [
    [["filesystem"], "--root"],
    [["--listen", "nowhere", "filesystem", "--root", "d"], "--listen"],
    [["--bogus", "filesystem", "--root", "d"], "unknown flag --bogus"],
    [["filesystem", "--root"], "--root needs a value"],
    [["--root", "d"], "missing storage subcommand"],
    [["s3"], "--bucket"],
    [["s3", "--bucket", "b", "--access-key", "k"], "go together"],
  ];
  for (const [args, message] of cases) {
    assertThrows(() => parseCommandLine(args, noEnv), ConfigError, message);
  }
});

Deno.test("connection limits: defaults, flags, environment, and mistakes", () => {
  assertEquals(settings(["filesystem", "--root", "d"]).connections, {
    maxConnections: undefined, // the descriptor limit decides (src/http/connections.ts)
    headerTimeoutMs: 10_000,
    idleTimeoutMs: 60_000,
  });
  const env = { MAX_CONNECTIONS: "500", HEADER_TIMEOUT: "3s", IDLE_TIMEOUT: "2m" };
  assertEquals(settings(["filesystem", "--root", "d"], env).connections, {
    maxConnections: 500,
    headerTimeoutMs: 3_000,
    idleTimeoutMs: 120_000,
  });
  assertEquals(
    settings(["--idle-timeout", "1500ms", "--max-connections=7", "filesystem", "--root", "d"], env)
      .connections,
    { maxConnections: 7, headerTimeoutMs: 3_000, idleTimeoutMs: 1_500 },
  );
  const fails = (args: string[], message: string) =>
    assertThrows(() => settings([...args, "filesystem", "--root", "d"]), ConfigError, message);
  fails(["--max-connections", "0"], '--max-connections: expected a positive number, got "0"');
  fails(["--max-connections", "many"], '--max-connections: expected a positive number, got "many"');
  fails(["--header-timeout", "soon"], '--header-timeout: invalid duration "soon"');
  fails(["--idle-timeout", "0s"], "--idle-timeout must be longer than 0s");
});

Deno.test("hosted namespaces, sparse manifests and upload expiry", () => {
  const s = settings(["--hosted", "myorg, internal,myorg", "filesystem", "--root", "d"]);
  assertEquals(s.hosted, ["myorg", "internal"]);
  assertEquals(s.sparseManifests, false);
  assertEquals(s.uploadExpiryMs, 24 * 3600_000);
  const fromEnv = settings(["filesystem", "--root", "d"], {
    HOSTED: "team.a",
    SPARSE_MANIFESTS: "1",
    UPLOAD_EXPIRY: "10m",
  });
  assertEquals([fromEnv.hosted, fromEnv.sparseManifests, fromEnv.uploadExpiryMs], [
    ["team.a"],
    true,
    600_000,
  ]);
  assertEquals(settings(["filesystem", "--root", "d"]).hosted, []);
  for (const bad of ["My-Org", "a/b", "docker.io", "-x"]) {
    assertThrows(() => settings(["--hosted", bad, "filesystem", "--root", "d"]), ConfigError);
  }
  assertThrows(() => settings(["--upload-expiry", "0s", "filesystem", "--root", "d"]), ConfigError);
});

Deno.test("--auth-config and --allow-anonymous-push, and not both", () => {
  const plain = settings(["filesystem", "--root", "d"]);
  assertEquals([plain.authConfigFile, plain.allowAnonymousPush], [undefined, false]);
  assertEquals(
    settings(["--auth-config", "a.yaml", "filesystem", "--root", "d"]).authConfigFile,
    "a.yaml",
  );
  assertEquals(
    settings(["filesystem", "--root", "d"], { AUTH_CONFIG: "b.yaml" }).authConfigFile,
    "b.yaml",
  );
  assertEquals(
    settings(["--allow-anonymous-push", "filesystem", "--root", "d"]).allowAnonymousPush,
    true,
  );
  assertThrows(
    () => settings(["--auth-config", "a", "--allow-anonymous-push", "filesystem", "--root", "d"]),
    ConfigError,
  );
});

Deno.test("--shutdown-grace: 25 s by default, 0 allowed, from SHUTDOWN_GRACE too", () => {
  assertEquals(settings(["filesystem", "--root", "d"]).shutdownGraceMs, 25_000);
  assertEquals(
    settings(["--shutdown-grace", "0s", "filesystem", "--root", "d"]).shutdownGraceMs,
    0,
  );
  assertEquals(
    settings(["filesystem", "--root", "d"], { SHUTDOWN_GRACE: "2m" }).shutdownGraceMs,
    120_000,
  );
  assertThrows(
    () => settings(["--shutdown-grace", "later", "filesystem", "--root", "d"]),
    ConfigError,
    '--shutdown-grace: invalid duration "later"',
  );
});

Deno.test("--log-format and --log-level: defaults, environment, and mistakes", () => {
  const s = settings(["filesystem", "--root", "d"]);
  assertEquals([s.logFormat, s.logLevel], ["text", "info"]);
  const env = { LOG_FORMAT: "json", LOG_LEVEL: "warn" };
  const e = settings(["filesystem", "--root", "d"], env);
  assertEquals([e.logFormat, e.logLevel], ["json", "warn"]);
  assertEquals(settings(["--log-level=error", "filesystem", "--root", "d"], env).logLevel, "error");
  assertThrows(
    () => settings(["--log-format", "xml", "filesystem", "--root", "d"]),
    ConfigError,
    '--log-format: expected text, json; got "xml"',
  );
  assertThrows(
    () => settings(["filesystem", "--root", "d"], { LOG_LEVEL: "loud" }),
    ConfigError,
    '--log-level: expected debug, info, warn, error; got "loud"',
  );
});

Deno.test("--max-cache-size: bytes, units, a share of the filesystem; --eviction-grace", () => {
  const s = settings(["filesystem", "--root", "d"]);
  assertEquals([s.maxCacheSize, s.evictionGraceMs], [undefined, 60_000]);
  assertEquals(settings(["--max-cache-size", "50GiB", "filesystem", "--root", "d"]).maxCacheSize, {
    bytes: 50 * 2 ** 30,
  });
  const env = { MAX_CACHE_SIZE: "80%", EVICTION_GRACE: "5s" };
  const e = settings(["filesystem", "--root", "d"], env);
  assertEquals([e.maxCacheSize, e.evictionGraceMs], [{ percent: 80 }, 5000]);
  assertThrows(
    () => settings(["--max-cache-size", "80%", "s3", "--bucket", "b"]),
    ConfigError,
    "a percentage needs filesystem storage",
  );
  assertThrows(
    () => settings(["--max-cache-size", "lots", "filesystem", "--root", "d"]),
    ConfigError,
    "--max-cache-size",
  );
});

Deno.test("gc subcommand: a dry run unless --delete; --min-age 1h by default; --gc-interval", () => {
  const dry = parseCommandLine(["gc", "filesystem", "--root", "d"], () => undefined);
  assertEquals(dry.kind === "gc" && [dry.delete, dry.minAgeMs], [false, 3_600_000]);
  const real = parseCommandLine(
    ["gc", "--delete", "--min-age", "0s", "--hosted", "myorg", "s3", "--bucket", "b"],
    () => undefined,
  );
  assertEquals(real.kind === "gc" && [real.delete, real.minAgeMs, real.settings.hosted], [
    true,
    0,
    ["myorg"],
  ]);
  assertThrows(
    () => parseCommandLine(["--delete", "filesystem", "--root", "d"], () => undefined),
    ConfigError,
    "unknown flag --delete",
  );
  assertEquals(
    settings(["--gc-interval", "6h", "filesystem", "--root", "d"]).gcIntervalMs,
    21_600_000,
  );
});

Deno.test("--client-rate and --client-downloads: off by default, positive numbers only", () => {
  assertEquals(settings(["filesystem", "--root", "d"]).clientLimits, {
    rate: undefined,
    downloads: undefined,
  });
  const s = settings(["--client-rate", "2.5", "filesystem", "--root", "d"], {
    CLIENT_DOWNLOADS: "4",
  });
  assertEquals(s.clientLimits, { rate: 2.5, downloads: 4 });
  for (
    const [flag, value] of [["--client-rate", "0"], ["--client-rate", "fast"], [
      "--client-downloads",
      "1.5",
    ]]
  ) {
    assertThrows(() => settings([flag, value, "filesystem", "--root", "d"]), ConfigError);
  }
});

Deno.test("oci-registry warm: images, --mirror (or MIRROR_URL), --platform", () => {
  const parse = (args: string[], env: Record<string, string> = {}) =>
    parseCommandLine(["warm", ...args], (name) => env[name]);
  assertEquals(parse(["alpine:3.19", "registry.k8s.io/pause:3.9"]), {
    kind: "warm",
    mirror: "http://127.0.0.1:8080",
    platforms: undefined,
    images: ["alpine:3.19", "registry.k8s.io/pause:3.9"],
  });
  assertEquals(
    parse(["--platform", "linux/amd64", "--platform=linux/arm64/v8", "x"], {
      MIRROR_URL: "http://mirror:5000",
    }),
    {
      kind: "warm",
      mirror: "http://mirror:5000",
      platforms: ["linux/amd64", "linux/arm64/v8"],
      images: ["x"],
    },
  );
  assertEquals(parse(["--help"]).kind, "help");
  assertThrows(() => parse([]), ConfigError, "warm: name at least one image");
  assertThrows(
    () => parse(["--mirror", "ftp://x", "a"]),
    ConfigError,
    "--mirror must be an http(s) URL",
  );
  assertThrows(
    () => parse(["--platform", "amd64", "a"]),
    ConfigError,
    "--platform expects os/arch",
  );
  assertThrows(() => parse(["--fast", "a"]), ConfigError, "warm: unknown flag --fast");
});
