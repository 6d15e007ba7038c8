/**
 * The gauges and counters the server's parts report through /metrics: read from each part when
 * scraped (the parts keep plain numbers, not metrics of their own).
 */
import type { ClientLimits } from "../http/client_limits.ts";
import type { ConnectionStats } from "../http/connections.ts";
import type { CacheBound } from "../mirror/bound.ts";
import type { Mirror } from "../mirror/mirror.ts";
import type { Metrics } from "../runtime/metrics.ts";
import type { UpstreamClient } from "../upstream/client.ts";
import type { RateLimitState } from "../upstream/rate_limits.ts";

export function registerUpstreamMetrics(metrics: Metrics, upstream: UpstreamClient): void {
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
}

export function registerMirrorMetrics(
  metrics: Metrics,
  mirror: Mirror,
  bound: CacheBound | undefined,
): void {
  metrics.gauge(
    "oci_registry_blob_downloads_in_flight",
    "Blob downloads from upstream under way.",
    () => mirror.activeDownloads,
  );
  if (!bound) return;
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

export function registerClientLimitMetrics(metrics: Metrics, limits: ClientLimits): void {
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

export function registerConnectionMetrics(
  metrics: Metrics,
  connections: Readonly<ConnectionStats>,
): void {
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
}
