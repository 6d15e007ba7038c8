/**
 * Entry point: command line + environment -> settings -> storage -> mirror -> HTTP server.
 * Configuration problems print one clear line and exit 2; nothing here prints secrets.
 */
import { versionLine } from "./build_info.ts";
import { Mirror } from "./cache/mirror.ts";
import { describeWarm, httpSource, startWarming, warmImage } from "./cache/warm.ts";
import { parseImageName } from "./oci/reference.ts";
import { parseCommandLine, type Settings, type StorageSettings } from "./cli.ts";
import { ConfigError, loadUpstreams } from "./config.ts";
import { AccessControl } from "./config/access.ts";
import { Auth } from "./http/auth.ts";
import { ClientLimits } from "./http/client_limits.ts";
import { tokenKey, TokenSigner } from "./http/token.ts";
import { listen as listenForConnections, listenUnguarded } from "./http/connections.ts";
import { readiness } from "./http/readiness.ts";
import { createLog, type Log } from "./log.ts";
import { Metrics } from "./metrics.ts";
import { LocalRegistry } from "./registry/local.ts";
import { createHandler } from "./server.ts";
import type { Storage } from "./storage/storage.ts";
import { UpstreamClient } from "./upstream/client.ts";
import type { RateLimitState } from "./upstream/rate_limits.ts";

export { VERSION } from "./build_info.ts";

async function openStorage(
  settings: StorageSettings,
): Promise<{ storage: Storage; spoolDir: string }> {
  if (settings.kind === "filesystem") {
    const { FilesystemStorage } = await import("./storage/filesystem.ts");
    // Cleans what a killed predecessor left half-written before anything is served.
    const storage = new FilesystemStorage(settings.root);
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
    log = createLog({ format: settings.logFormat, level: settings.logLevel });
    upstreams = await loadUpstreams(
      settings.upstreamConfigFile,
      Deno.env.get("UPSTREAM_CREDENTIALS"),
    );
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
  const mirror = new Mirror({
    storage,
    upstream,
    upstreams,
    spoolDir,
    log,
    metrics,
    upstreamPolicy: settings.upstreamPolicy,
  });
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
  const auth = access && signingKey
    ? new Auth({ access, signer: new TokenSigner(signingKey, access.token.ttlMs), metrics })
    : undefined;
  const warming = startWarming(mirror, upstreams.configured(), log);
  const ready = readiness(storage);
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
    auth,
    allowAnonymousPush: settings.allowAnonymousPush,
    limits,
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
  upstream.close();
  await storage.close?.();
  // S3 spools live in a directory of this process's own; the filesystem's .tmp stays.
  if (settings.storage.kind === "s3") {
    await Deno.remove(spoolDir, { recursive: true }).catch(() => {});
  }
  await log.flush();
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main());
}
