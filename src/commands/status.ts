/** What the status page shows, gathered from the parts that know it at the moment it is asked. */
import { VERSION } from "../runtime/build_info.ts";
import type { StatusSnapshot } from "../http/status_page.ts";
import type { CacheBound } from "../mirror/bound.ts";
import type { Log } from "../runtime/log.ts";
import type { Metrics } from "../runtime/metrics.ts";
import type { Storage } from "../storage/storage.ts";
import type { UpstreamClient } from "../upstream/client.ts";

/** The status page's figures, read from the metrics, the log, the upstream client and the index. */
export function statusSnapshot(
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
