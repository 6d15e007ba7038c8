/**
 * Entry point: command line + environment -> settings -> storage -> mirror -> HTTP server.
 * Configuration problems print one clear line and exit 2; nothing here prints secrets.
 */
import { VERSION, versionLine } from "./runtime/build_info.ts";
import { CacheBound } from "./mirror/bound.ts";
import { Mirror } from "./mirror/mirror.ts";
import { describeWarm, httpSource, startWarming, warmImage } from "./mirror/warm.ts";
import { parseImageName } from "./oci/reference.ts";
import { parseCommandLine, type Settings, type StorageSettings } from "./config/cli.ts";
import { ConfigError, loadConfigFile } from "./config/upstreams.ts";
import { combineHosted } from "./config/hosted.ts";
import { filesystemBytes } from "./config/size.ts";
import { AccessControl } from "./config/access.ts";
import { Auth } from "./http/auth.ts";
import { ClientLimits } from "./http/client_limits.ts";
import { PassthroughGate } from "./http/passthrough.ts";
import { tokenKey, TokenSigner } from "./http/token.ts";
import { listen as listenForConnections, listenUnguarded } from "./http/connections.ts";
import { readiness } from "./http/readiness.ts";
import { createLog, type Log } from "./runtime/log.ts";
import type { StatusSnapshot } from "./http/status_page.ts";
import { Metrics } from "./runtime/metrics.ts";
import { LocalRegistry } from "./registry/local.ts";
import {
  collectGarbage,
  DEFAULT_MIN_AGE_MS,
  formatReport,
  type GcOptions,
  SPOOL_MAX_AGE_MS,
} from "./registry/gc.ts";
import { createHandler } from "./http/server.ts";
import type { Storage } from "./storage/storage.ts";
import { UpstreamClient } from "./upstream/client.ts";
import type { RateLimitState } from "./upstream/rate_limits.ts";

export { VERSION } from "./runtime/build_info.ts";

async function openStorage(
  settings: StorageSettings,
  { keepTemp = false } = {},
): Promise<{ storage: Storage; spoolDir: string }> {
  if (settings.kind === "filesystem") {
    const { FilesystemStorage } = await import("./storage/filesystem.ts");
    // Cleans what a killed predecessor left half-written before anything is served.
    const storage = new FilesystemStorage(settings.root, { keepTemp });
    // Spools live beside the store so that publishing a verified download is a rename.
    return { storage, spoolDir: storage.tempDir };
  }
  const { S3Storage } = await import("./storage/s3.ts");
  const storage = new S3Storage({
    bucket: settings.bucket,
    endpoint: settings.endpoint,
    region: settings.region,
    prefix: settings.prefix,
    accessKeyId: settings.accessKeyId,
    secretAccessKey: settings.secretAccessKey,
    redirect: settings.redirect,
  });
  await storage.init(); // a wrong bucket or unreachable endpoint fails here, not on a pull
  // A directory of this process's own (removed at shutdown), inside --spool-dir when given.
  if (settings.spoolDir) await Deno.mkdir(settings.spoolDir, { recursive: true });
  const spoolDir = await Deno.makeTempDir({
    dir: settings.spoolDir,
    prefix: "oci-registry-spool-",
  });
  return { storage, spoolDir };
}

function describeListen(listen: Settings["listen"]): string {
  return listen.kind === "unix" ? `unix:${listen.path}` : `${listen.hostname}:${listen.port}`;
}

function describeAddr(addr: Deno.Addr): string {
  if ("path" in addr) return `unix:${addr.path}`;
  return `http://${(addr as Deno.NetAddr).hostname}:${(addr as Deno.NetAddr).port}`;
}

/** `oci-registry warm`: each image pulled through a running mirror, a line each, a summary. */
async function warmThroughMirror(
  command: { mirror: string; platforms?: string[]; images: string[] },
): Promise<number> {
  let failed = 0;
  // A mirror with --auth-config: the user's credentials, sent as Basic on every request.
  const user = Deno.env.get("MIRROR_USERNAME");
  const authorization = user === undefined ? undefined : `Basic ${
    btoa(String.fromCharCode(
      ...new TextEncoder().encode(`${user}:${Deno.env.get("MIRROR_PASSWORD") ?? ""}`),
    ))
  }`;
  for (const name of command.images) {
    const started = performance.now();
    try {
      const { registry, repository, reference } = parseImageName(name);
      const result = await warmImage(httpSource(command.mirror, registry, authorization), {
        repository,
        reference,
        platforms: command.platforms,
      });
      console.log(`${name}: ok, ${describeWarm(result, performance.now() - started)}`);
    } catch (e) {
      failed++;
      console.log(`${name}: failed: ${(e as Error)?.message ?? e}`);
    }
  }
  const warmed = command.images.length - failed;
  console.log(`warmed ${warmed} of ${command.images.length} image(s) through ${command.mirror}`);
  return failed === 0 ? 0 : 1;
}

async function main(): Promise<number> {
  const startedAt = new Date();
  let settings: Settings;
  let upstreams;
  let access: AccessControl | undefined;
  let signingKey: Uint8Array | undefined;
  let log: Log;
  try {
    const parsed = parseCommandLine(Deno.args, (name) => Deno.env.get(name));
    if (parsed.kind === "help") {
      console.log(parsed.text);
      return 0;
    }
    if (parsed.kind === "version") {
      console.log(versionLine());
      return 0;
    }
    if (parsed.kind === "warm") return await warmThroughMirror(parsed);
    settings = parsed.settings;
    const file = await loadConfigFile(
      settings.upstreamConfigFile,
      Deno.env.get("UPSTREAM_CREDENTIALS"),
    );
    upstreams = file.upstreams;
    // The file's hosted names count for gc too: it must honour every hosted repository's links.
    settings = {
      ...settings,
      hosted: combineHosted(
        settings.hosted,
        settings.upstreamConfigFile
          ? { source: settings.upstreamConfigFile, names: file.hosted }
          : undefined,
        settings.defaultNamespace,
        upstreams,
      ),
    };
    if (parsed.kind === "gc") return await gcCommand(settings, parsed.delete, parsed.minAgeMs);
    log = createLog({ format: settings.logFormat, level: settings.logLevel });
    if (settings.authConfigFile) {
      const configured = upstreams;
      access = await AccessControl.load(settings.authConfigFile, {
        // An upstream the mirror logs in to is private: its content needs a user by default.
        isPrivate: (namespace) => configured.get(namespace).username !== undefined,
        log,
      });
      signingKey = await tokenKey(access.token.secretFile).catch((e) => {
        throw new ConfigError(`token secret: ${(e as Error).message}`);
      });
    }
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(`oci-registry: ${e.message}`);
      return 2;
    }
    throw e;
  }

  let storage: Storage;
  let spoolDir: string;
  try {
    ({ storage, spoolDir } = await openStorage(settings.storage));
  } catch (e) {
    console.error(`oci-registry: cannot open storage: ${(e as Error).message}`);
    return 1;
  }
  const upstream = new UpstreamClient(upstreams, {
    allowPrivateAddresses: settings.allowPrivateUpstreams,
    log,
  });
  const metrics = new Metrics();
  let bound: CacheBound | undefined;
  if (settings.maxCacheSize) {
    const size = settings.maxCacheSize;
    try {
      bound = new CacheBound({
        storage,
        maxBytes: "bytes" in size ? size.bytes : Math.floor(
          (await filesystemBytes((settings.storage as { root: string }).root)) * size.percent / 100,
        ),
        hosted: settings.hosted,
        graceMs: settings.evictionGraceMs,
        log,
        onEvicted: (keys) => mirror.forget(keys),
      });
      await bound.load();
    } catch (e) {
      console.error(`oci-registry: cannot index the cache: ${(e as Error).message}`);
      upstream.close();
      await storage.close?.();
      return 1;
    }
    registerBoundMetrics(metrics, bound);
  }
  const mirror = new Mirror({
    storage,
    upstream,
    upstreams,
    spoolDir,
    log,
    metrics,
    upstreamPolicy: settings.upstreamPolicy,
    bound,
  });
  bound?.start();
  // Unconfigured namespaces share the label "other": the lowest of their values is shown.
  const rateLimitGauge = (pick: (state: RateLimitState) => number | undefined) => () => {
    const lowest = new Map<string, [Record<string, string>, number]>();
    for (const { namespace, credential, state } of upstream.rateLimitStates()) {
      const value = pick(state);
      if (value === undefined) continue;
      const labels = { namespace: metrics.namespaceLabel(namespace), credential };
      const key = `${labels.namespace} ${credential}`;
      const seen = lowest.get(key);
      if (!seen || value < seen[1]) lowest.set(key, [labels, value]);
    }
    return [...lowest.values()];
  };
  metrics.labelledGauge(
    "oci_registry_upstream_ratelimit_remaining",
    "Requests left in the upstream's rate-limit window, as its ratelimit-remaining said last.",
    rateLimitGauge((state) => state.remaining),
  );
  metrics.labelledGauge(
    "oci_registry_upstream_ratelimit_limit",
    "Requests allowed per rate-limit window, as the upstream's ratelimit-limit said last.",
    rateLimitGauge((state) => state.limit),
  );
  metrics.labelledGauge(
    "oci_registry_upstream_endpoint_up",
    "1 while an endpoint of a failover namespace (hosts:) is in use, 0 while it is skipped.",
    () =>
      upstream.endpointStates().map((
        { namespace, host, up },
      ) => [{ namespace, endpoint: host }, up ? 1 : 0]),
  );
  metrics.gauge(
    "oci_registry_blob_downloads_in_flight",
    "Blob downloads from upstream under way.",
    () => mirror.activeDownloads,
  );
  const registry = new LocalRegistry({
    storage,
    namespaces: settings.hosted,
    uploadExpiryMs: settings.uploadExpiryMs,
    sparseManifests: settings.sparseManifests,
  });
  // Abandoned upload sessions are removed at start and then every few minutes.
  const expireUploads = () =>
    registry.uploads.expire().catch((e) => log(`upload expiry failed: ${(e as Error).message}`));
  const uploadSweep = settings.hosted.length === 0 ? undefined : setInterval(
    expireUploads,
    Math.min(settings.uploadExpiryMs, 10 * 60_000),
  );
  if (uploadSweep !== undefined) expireUploads();
  const signer = access && signingKey ? new TokenSigner(signingKey, access.token.ttlMs) : undefined;
  const passthrough = upstreams.configured().some((u) => u.auth === "passthrough")
    ? new PassthroughGate({
      upstreams,
      checker: upstream,
      verifyToken: signer && ((token) => signer.verify(token)),
      onCheck: (namespace, result) =>
        metrics.passthroughChecks.inc({ namespace: metrics.namespaceLabel(namespace), result }),
    })
    : undefined;
  const auth = access && signer ? new Auth({ access, signer, metrics, passthrough }) : undefined;
  const warming = startWarming(mirror, upstreams.configured(), log);
  const ready = readiness(storage);
  const gcStats = { runs: 0, failures: 0, objects: 0, bytes: 0 };
  const gcTimer = settings.gcIntervalMs === 0 ? undefined : setInterval(async () => {
    try {
      const report = await collectGarbage(
        gcOptions(settings, storage, DEFAULT_MIN_AGE_MS, spoolDir),
        true,
      );
      gcStats.runs++;
      gcStats.objects += report.removed.length;
      gcStats.bytes += report.bytes;
      const keys = report.removed.map((item) => item.key);
      for (const key of keys) bound?.index.remove(key);
      mirror.forget(keys);
      if (keys.length > 0) log(formatReport(report, true));
    } catch (e) {
      gcStats.failures++;
      log(`garbage collection failed: ${(e as Error).message}`, "warn");
    }
  }, settings.gcIntervalMs);
  registerGcMetrics(metrics, gcStats);
  const { rate, downloads } = settings.clientLimits;
  const limits = rate !== undefined || downloads !== undefined
    ? new ClientLimits(settings.clientLimits)
    : undefined;
  if (limits) {
    metrics.sampledCounter(
      "oci_registry_client_rate_limited_total",
      "Requests answered 429 for exceeding --client-rate.",
      () => limits.refused.rate,
    );
    metrics.sampledCounter(
      "oci_registry_client_downloads_limited_total",
      "Blob GETs answered 429 for exceeding --client-downloads.",
      () => limits.refused.downloads,
    );
  }
  const handler = createHandler({
    mirror,
    registry,
    hosted: settings.hosted,
    defaultNamespace: settings.defaultNamespace,
    metrics,
    log,
    accessLog: log.access,
    readiness: ready.check,
    status: () => statusSnapshot(metrics, log, upstream, storage, bound, startedAt),
    auth,
    allowAnonymousPush: settings.allowAnonymousPush,
    limits,
    passthrough,
  });

  // Off-thread hashing and the malloc tuning need --allow-ffi (both start with the first blob).
  // Without it cold pulls work the same, only slower under load.
  const nativeHelp = Deno.permissions.querySync({ name: "ffi" }).state === "granted"
    ? "blob hashing on a libcrypto thread"
    : "no FFI: blob hashing in place";
  const named = upstreams.configured().map((u) => u.namespace).join(", ") || "none";
  let server;
  try {
    server = settings.unguardedConnections
      ? listenUnguarded(settings.listen, handler)
      : listenForConnections(settings.listen, handler, settings.connections, log);
  } catch (e) {
    console.error(
      `oci-registry: cannot listen on ${describeListen(settings.listen)}: ${(e as Error).message}`,
    );
    upstream.close();
    await storage.close?.();
    return 1;
  }
  const connections = server.stats;
  log(
    `${versionLine()} listening on ${
      describeAddr(server.addr)
    } (storage: ${storage.description}; configured upstreams: ${named}; hosted: ${
      settings.hosted.join(", ") || "none"
    }; ${
      Number.isFinite(server.maxConnections)
        ? `at most ${server.maxConnections} connections`
        : "connections unguarded"
    }; ${
      auth
        ? `auth: ${settings.authConfigFile}${
          access!.token.secretFile ? "" : ", tokens signed by a per-process key"
        }`
        : settings.hosted.length > 0 && !settings.allowAnonymousPush
        ? "no auth: hosted repositories are read-only"
        : "no auth"
    }; ${nativeHelp})`,
  );
  metrics.gauge(
    "oci_registry_http_connections_open",
    "Client connections open now.",
    () => connections.open,
  );
  metrics.gauge(
    "oci_registry_http_requests_in_progress",
    "Requests whose response is not fully sent yet.",
    () => connections.activeRequests,
  );
  metrics.sampledCounter(
    "oci_registry_http_connections_timed_out_total",
    "Connections closed for sending no request head, or idling, past their timeout.",
    () => connections.timedOut,
  );
  metrics.sampledCounter(
    "oci_registry_http_connections_evicted_total",
    "Idle connections closed early to make room (at the connection cap, or on EMFILE).",
    () => connections.evicted,
  );
  metrics.sampledCounter(
    "oci_registry_http_connections_shed_total",
    "Connections and requests answered 503 because every slot was busy.",
    () => connections.shed,
  );
  metrics.sampledCounter(
    "oci_registry_http_accept_errors_total",
    "accept() failures (descriptors exhausted).",
    () => connections.acceptErrors,
  );

  // SIGTERM/SIGINT: stop accepting, let responses and downloads in flight finish within the
  // grace period, then close whatever is left and exit 0. A second signal ends the wait.
  let signalled!: (signal: string) => void;
  const stopRequested = new Promise<string>((resolve) => signalled = resolve);
  let forced!: (inTime: false) => void;
  const secondSignal = new Promise<false>((resolve) => forced = resolve);
  let stopping = false;
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    Deno.addSignalListener(signal, () => {
      if (stopping) {
        log(`${signal} again: not waiting any longer`);
        forced(false);
      }
      stopping = true;
      signalled(signal);
    });
  }
  const reason = await Promise.race([stopRequested, server.finished.then(() => "listener closed")]);
  ready.shuttingDown();
  clearInterval(uploadSweep);
  warming.stop();
  const graceMs = settings.shutdownGraceMs;
  log(`${reason}: shutting down; requests and downloads in flight have ${graceMs / 1000} s`);
  clearInterval(gcTimer);
  const inFlight = Promise.all([server.shutdown(), mirror.settled()]).then(() => true);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const inTime = await Promise.race([
    inFlight,
    secondSignal,
    new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), graceMs)),
  ]);
  clearTimeout(timer);
  if (!inTime) {
    log(
      `stopping now: closing ${connections.open} connection(s), leaving ${mirror.activeDownloads} download(s) unfinished`,
    );
    server.closeAll();
  }
  await bound?.close();
  upstream.close();
  await storage.close?.();
  // S3 spools live in a directory of this process's own; the filesystem's .tmp stays.
  if (settings.storage.kind === "s3") {
    await Deno.remove(spoolDir, { recursive: true }).catch(() => {});
  }
  await log.flush();
  return 0;
}

/** The status page's figures, read from the metrics, the log, the upstream client and the index. */
function statusSnapshot(
  metrics: Metrics,
  log: Log,
  upstream: UpstreamClient,
  storage: Storage,
  bound: CacheBound | undefined,
  startedAt: Date,
): StatusSnapshot {
  const upstreams = new Map<string, StatusSnapshot["upstreams"][number]>();
  const row = (namespace: string) => {
    let found = upstreams.get(namespace);
    if (!found) upstreams.set(namespace, found = { namespace, requests: 0, errors: 0 });
    return found;
  };
  for (const { labels, value } of metrics.upstream.series()) {
    row(labels.namespace).requests += value;
  }
  for (const { labels, value } of metrics.upstreamErrors.series()) {
    // A 404 is an answer, not a failing upstream.
    if (labels.code !== "MANIFEST_UNKNOWN" && labels.code !== "BLOB_UNKNOWN") {
      row(labels.namespace).errors += value;
    }
  }
  for (const { namespace, state } of upstream.rateLimitStates()) {
    const entry = row(metrics.namespaceLabel(namespace));
    if (state.remaining !== undefined && (entry.remaining ?? Infinity) > state.remaining) {
      entry.remaining = state.remaining;
      entry.limit = state.limit;
    }
  }
  return {
    version: VERSION,
    storage: storage.description,
    startedAt,
    now: new Date(),
    cache: bound && {
      bytes: bound.index.bytes,
      maxBytes: bound.maxBytes,
      entries: bound.index.entries,
      evictions: bound.evictions,
      repositories: bound.index.repositories(),
    },
    lookups: metrics.cache.series().map(({ labels, value }) => ({
      kind: labels.kind,
      result: labels.result,
      count: value,
    })),
    upstreams: [...upstreams.values()].sort((a, b) => a.namespace.localeCompare(b.namespace)),
    recentErrors: log.recent(),
  };
}

/** What a collection looks at; spools are swept only when they belong to no live process. */
function gcOptions(
  settings: Settings,
  storage: Storage,
  minAgeMs: number,
  ownSpool?: string,
): GcOptions {
  const spoolParent = settings.storage.kind === "filesystem"
    ? undefined
    : settings.storage.spoolDir ?? Deno.env.get("TMPDIR") ?? "/tmp";
  return {
    storage,
    hosted: settings.hosted,
    minAgeMs,
    uploadExpiryMs: settings.uploadExpiryMs,
    spools: settings.storage.kind === "filesystem"
      ? [{
        dir: `${settings.storage.root}/.tmp`,
        maxAgeMs: SPOOL_MAX_AGE_MS,
        keep: (name) => name === ".lock",
      }]
      // The files in every process's spool directory, never the directories: an idle server's
      // own may be old, and it must still be there for its next download.
      : spoolDirs(spoolParent!).filter((dir) => dir !== ownSpool).map((dir) => ({
        dir,
        maxAgeMs: SPOOL_MAX_AGE_MS,
      })),
  };
}

function spoolDirs(parent: string): string[] {
  try {
    return [...Deno.readDirSync(parent)]
      .filter((entry) => entry.isDirectory && entry.name.startsWith("oci-registry-spool-"))
      .map((entry) => `${parent}/${entry.name}`);
  } catch {
    return []; // no spool parent yet: nothing left behind
  }
}

/** `oci-registry gc`: lists (or with --delete removes) garbage, then exits. */
async function gcCommand(settings: Settings, remove: boolean, minAgeMs: number): Promise<number> {
  let opened: { storage: Storage; spoolDir: string };
  try {
    opened = await openStorage(settings.storage, { keepTemp: true });
  } catch (e) {
    console.error(`oci-registry: cannot open storage: ${(e as Error).message}`);
    return 1;
  }
  const { storage, spoolDir } = opened;
  try {
    const report = await collectGarbage(gcOptions(settings, storage, minAgeMs, spoolDir), remove);
    console.log(formatReport(report, remove));
    return 0;
  } catch (e) {
    console.error(`oci-registry gc: ${(e as Error).message}`);
    return 1;
  } finally {
    await storage.close?.();
    if (settings.storage.kind === "s3") {
      await Deno.remove(spoolDir, { recursive: true }).catch(() => {});
    }
  }
}

function registerGcMetrics(
  metrics: Metrics,
  stats: { runs: number; failures: number; objects: number; bytes: number },
): void {
  metrics.sampledCounter(
    "oci_registry_gc_runs_total",
    "Periodic garbage collections completed (--gc-interval).",
    () => stats.runs,
  );
  metrics.sampledCounter(
    "oci_registry_gc_failures_total",
    "Periodic garbage collections that failed.",
    () => stats.failures,
  );
  metrics.sampledCounter(
    "oci_registry_gc_removed_objects_total",
    "Objects garbage collection removed.",
    () => stats.objects,
  );
  metrics.sampledCounter(
    "oci_registry_gc_removed_bytes_total",
    "Bytes garbage collection freed.",
    () => stats.bytes,
  );
}

function registerBoundMetrics(metrics: Metrics, bound: CacheBound): void {
  metrics.gauge(
    "oci_registry_cache_size_bytes",
    "Bytes of mirrored content in the store (hosted repositories not included).",
    () => bound.index.bytes,
  );
  metrics.gauge(
    "oci_registry_cache_max_size_bytes",
    "The bound --max-cache-size sets.",
    () => bound.maxBytes,
  );
  metrics.gauge(
    "oci_registry_cache_entries",
    "Mirrored manifests and blobs in the store.",
    () => bound.index.entries,
  );
  metrics.sampledCounter(
    "oci_registry_cache_evictions_total",
    "Images (or lone blobs) evicted to keep the cache within its bound.",
    () => bound.evictions,
  );
  metrics.sampledCounter(
    "oci_registry_cache_evicted_bytes_total",
    "Bytes freed by eviction.",
    () => bound.evictedBytes,
  );
}

if (import.meta.main) {
  Deno.exit(await main());
}
