/**
 * The server: settings -> storage -> upstream client -> mirror and local registry -> HTTP
 * handler -> listener, then a graceful shutdown on SIGTERM/SIGINT. Wiring only: each part's
 * behaviour lives in its own module.
 */
import type { AccessControl } from "../config/access.ts";
import type { Settings } from "../config/cli.ts";
import { filesystemBytes } from "../config/size.ts";
import type { UpstreamRegistry } from "../config/upstreams.ts";
import { Auth } from "../http/auth.ts";
import { ClientLimits } from "../http/client_limits.ts";
import { listen as listenForConnections, listenUnguarded } from "../http/connections.ts";
import { PassthroughGate } from "../http/passthrough.ts";
import { readiness } from "../http/readiness.ts";
import { createHandler } from "../http/server.ts";
import { TokenSigner } from "../http/token.ts";
import { CacheBound } from "../mirror/bound.ts";
import { Mirror } from "../mirror/mirror.ts";
import { startWarming } from "../mirror/warm.ts";
import { LocalRegistry } from "../registry/local.ts";
import { versionLine } from "../runtime/build_info.ts";
import type { Log } from "../runtime/log.ts";
import { Metrics } from "../runtime/metrics.ts";
import { processStreaming } from "../runtime/streaming.ts";
import { UpstreamClient } from "../upstream/client.ts";
import { startPeriodicGc } from "./gc.ts";
import {
  registerClientLimitMetrics,
  registerConnectionMetrics,
  registerMirrorMetrics,
  registerUpstreamMetrics,
} from "./serve_metrics.ts";
import { statusSnapshot } from "./status.ts";
import { closeStorage, type OpenedStorage, openStorage } from "./storage.ts";

export interface ServeOptions {
  settings: Settings;
  upstreams: UpstreamRegistry;
  log: Log;
  /** Users, rules and the token signing key, with --auth-config. */
  auth?: { access: AccessControl; signingKey: Uint8Array };
}

/** Runs the server until it is told to stop; the process's exit code. */
export async function serve({ settings, upstreams, log, auth: authConfig }: ServeOptions) {
  const startedAt = new Date();
  // The process's GC pacing and off-thread hashing, for everything that streams blobs.
  const streaming = processStreaming();
  let opened: OpenedStorage;
  try {
    opened = await openStorage(settings.storage, { streaming });
  } catch (e) {
    console.error(`oci-registry: cannot open storage: ${(e as Error).message}`);
    return 1;
  }
  const { storage, spoolDir } = opened;
  const upstream = new UpstreamClient(upstreams, {
    allowPrivateAddresses: settings.allowPrivateUpstreams,
    log,
  });
  const closeAll = async () => {
    upstream.close();
    await closeStorage(opened, settings);
  };
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
      await closeAll();
      return 1;
    }
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
    streaming,
  });
  bound?.start();
  registerUpstreamMetrics(metrics, upstream);
  registerMirrorMetrics(metrics, mirror, bound);
  const registry = new LocalRegistry({
    storage,
    namespaces: settings.hosted,
    uploadExpiryMs: settings.uploadExpiryMs,
    streaming,
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
  const signer = authConfig &&
    new TokenSigner(authConfig.signingKey, authConfig.access.token.ttlMs);
  const passthrough = upstreams.configured().some((u) => u.auth === "passthrough")
    ? new PassthroughGate({
      upstreams,
      checker: upstream,
      verifyToken: signer && ((token) => signer.verify(token)),
      onCheck: (namespace, result) =>
        metrics.passthroughChecks.inc({ namespace: metrics.namespaceLabel(namespace), result }),
      log,
    })
    : undefined;
  const auth = authConfig && signer
    ? new Auth({ access: authConfig.access, signer, metrics, passthrough })
    : undefined;
  const warming = startWarming(mirror, upstreams.configured(), log);
  const ready = readiness(storage);
  const gc = startPeriodicGc(settings, opened, { bound, mirror, log, metrics });
  const { rate, downloads } = settings.clientLimits;
  const limits = rate !== undefined || downloads !== undefined
    ? new ClientLimits(settings.clientLimits)
    : undefined;
  if (limits) registerClientLimitMetrics(metrics, limits);
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
    streaming,
  });

  let server;
  try {
    server = settings.unguardedConnections
      ? listenUnguarded(settings.listen, handler)
      : listenForConnections(settings.listen, handler, settings.connections, log);
  } catch (e) {
    console.error(
      `oci-registry: cannot listen on ${describeListen(settings.listen)}: ${(e as Error).message}`,
    );
    await closeAll();
    return 1;
  }
  const connections = server.stats;
  registerConnectionMetrics(metrics, connections);
  // Off-thread hashing and the malloc tuning need --allow-ffi (both start with the first blob).
  // Without it cold pulls work the same, only slower under load.
  const nativeHelp = Deno.permissions.querySync({ name: "ffi" }).state === "granted"
    ? "blob hashing on a libcrypto thread"
    : "no FFI: blob hashing in place";
  const named = upstreams.configured().map((u) => u.namespace).join(", ") || "none";
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
          authConfig!.access.token.secretFile ? "" : ", tokens signed by a per-process key"
        }`
        : settings.hosted.length > 0 && !settings.allowAnonymousPush
        ? "no auth: hosted repositories are read-only"
        : "no auth"
    }; ${nativeHelp})`,
  );

  const stop = stopSignals(log);
  const reason = await Promise.race([
    stop.requested,
    server.finished.then(() => "listener closed"),
  ]);
  ready.shuttingDown();
  clearInterval(uploadSweep);
  warming.stop();
  gc.stop();
  const graceMs = settings.shutdownGraceMs;
  log(`${reason}: shutting down; requests and downloads in flight have ${graceMs / 1000} s`);
  const inFlight = Promise.all([server.shutdown(), mirror.settled()]).then(() => true);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const inTime = await Promise.race([
    inFlight,
    stop.again,
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
  await closeAll();
  await log.flush();
  return 0;
}

/**
 * SIGTERM/SIGINT: the first asks for a graceful stop (requests and downloads in flight get the
 * grace period), a second one ends the wait.
 */
function stopSignals(log: Log): { requested: Promise<string>; again: Promise<false> } {
  let signalled!: (signal: string) => void;
  const requested = new Promise<string>((resolve) => signalled = resolve);
  let forced!: (inTime: false) => void;
  const again = new Promise<false>((resolve) => forced = resolve);
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
  return { requested, again };
}

function describeListen(listen: Settings["listen"]): string {
  return listen.kind === "unix" ? `unix:${listen.path}` : `${listen.hostname}:${listen.port}`;
}

function describeAddr(addr: Deno.Addr): string {
  if ("path" in addr) return `unix:${addr.path}`;
  return `http://${(addr as Deno.NetAddr).hostname}:${(addr as Deno.NetAddr).port}`;
}
