/**
 * Garbage collection as a command (`oci-registry gc [--delete]`) and as the server's periodic
 * run (`--gc-interval`), both over registry/gc.ts with the same view of what to look at.
 */
import type { Settings } from "../config/cli.ts";
import type { CacheBound } from "../mirror/bound.ts";
import type { Mirror } from "../mirror/mirror.ts";
import {
  collectGarbage,
  DEFAULT_MIN_AGE_MS,
  formatReport,
  type GcOptions,
  SPOOL_MAX_AGE_MS,
} from "../registry/gc.ts";
import type { Log } from "../runtime/log.ts";
import type { Metrics } from "../runtime/metrics.ts";
import type { Storage } from "../storage/storage.ts";
import { closeStorage, type OpenedStorage, openStorage } from "./storage.ts";

/** `oci-registry gc`: lists (or with --delete removes) garbage, then exits. */
export async function gcCommand(
  settings: Settings,
  remove: boolean,
  minAgeMs: number,
): Promise<number> {
  let opened: OpenedStorage;
  try {
    opened = await openStorage(settings.storage, { keepTemp: true });
  } catch (e) {
    console.error(`oci-registry: cannot open storage: ${(e as Error).message}`);
    return 1;
  }
  try {
    const options = gcOptions(settings, opened.storage, minAgeMs, opened.spoolDir);
    console.log(formatReport(await collectGarbage(options, remove), remove));
    return 0;
  } catch (e) {
    console.error(`oci-registry gc: ${(e as Error).message}`);
    return 1;
  } finally {
    await closeStorage(opened, settings);
  }
}

/**
 * Collections every `settings.gcIntervalMs` inside the server (none when 0), with their counters
 * in the metrics. What they remove is forgotten by the size bound and the mirror's memory.
 */
export function startPeriodicGc(
  settings: Settings,
  { storage, spoolDir }: OpenedStorage,
  { bound, mirror, log, metrics }: {
    bound?: CacheBound;
    mirror: Mirror;
    log: Log;
    metrics: Metrics;
  },
): { stop(): void } {
  const stats = { runs: 0, failures: 0, objects: 0, bytes: 0 };
  registerGcMetrics(metrics, stats);
  if (settings.gcIntervalMs === 0) return { stop() {} };
  const timer = setInterval(async () => {
    try {
      const report = await collectGarbage(
        gcOptions(settings, storage, DEFAULT_MIN_AGE_MS, spoolDir),
        true,
      );
      stats.runs++;
      stats.objects += report.removed.length;
      stats.bytes += report.bytes;
      const keys = report.removed.map((item) => item.key);
      for (const key of keys) bound?.index.remove(key);
      mirror.forget(keys);
      if (keys.length > 0) log(formatReport(report, true));
    } catch (e) {
      stats.failures++;
      log(`garbage collection failed: ${(e as Error).message}`, "warn");
    }
  }, settings.gcIntervalMs);
  return { stop: () => clearInterval(timer) };
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
