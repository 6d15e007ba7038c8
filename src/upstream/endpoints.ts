/**
 * Failover between the endpoints of one namespace (`hosts:` in the upstream file). An endpoint
 * that fails with something another endpoint could answer (a connection error, a timeout, a 5xx,
 * a 429) is skipped for a backoff period that doubles while it keeps failing; requests go to the
 * first endpoint in configured order that is not skipped, so the preferred one is used again as
 * soon as its backoff ends and it answers. When every endpoint is skipped, the one due back
 * first is tried anyway: a namespace never refuses for lack of a healthy endpoint alone.
 */
import type { UpstreamConfig } from "../config/upstreams.ts";

export const DEFAULT_FAILOVER_BACKOFF_MS = 30_000;
/** Longest an endpoint is skipped, however often it failed. */
const MAX_BACKOFF_MS = 5 * 60_000;

interface Health {
  /** Failures in a row. */
  failures: number;
  /** Skipped until then (ms since the epoch); 0 when up. */
  downUntil: number;
}

/** The upstream as each of its endpoints sees it: same namespace and policy, own host and TLS. */
export function endpointsOf(upstream: UpstreamConfig): UpstreamConfig[] {
  if (!upstream.endpoints || upstream.endpoints.length === 0) return [upstream];
  return upstream.endpoints.map((endpoint) => ({ ...upstream, ...endpoint }));
}

export class EndpointHealth {
  readonly #health = new Map<string, Health>();
  readonly #now: () => number;
  readonly #log: (message: string, level?: "info" | "warn") => void;

  constructor(log: (message: string, level?: "info" | "warn") => void, now = Date.now) {
    this.#log = log;
    this.#now = now;
  }

  /**
   * The endpoint to ask now: the first that is neither skipped nor `blocked` (rate-limited),
   * else the one due back soonest.
   */
  pick(
    endpoints: UpstreamConfig[],
    blocked: (endpoint: UpstreamConfig) => boolean,
  ): UpstreamConfig {
    if (endpoints.length === 1) return endpoints[0];
    const now = this.#now();
    const up = endpoints.find((e) => this.#downUntil(e) <= now && !blocked(e));
    if (up) return up;
    return endpoints.reduce((a, b) => this.#downUntil(b) < this.#downUntil(a) ? b : a);
  }

  /** Whether another endpoint than `failed` may be asked now. */
  hasAlternative(endpoints: UpstreamConfig[], failed: UpstreamConfig): boolean {
    const now = this.#now();
    return endpoints.some((e) => e.host !== failed.host && this.#downUntil(e) <= now);
  }

  failed(endpoint: UpstreamConfig, reason: string): void {
    if (!endpoint.endpoints || endpoint.endpoints.length < 2) return; // nothing to fail over to
    const key = keyOf(endpoint);
    const health = this.#health.get(key) ?? { failures: 0, downUntil: 0 };
    health.failures++;
    const base = endpoint.failoverBackoffMs ?? DEFAULT_FAILOVER_BACKOFF_MS;
    const backoff = Math.min(MAX_BACKOFF_MS, base * 2 ** (health.failures - 1));
    health.downUntil = this.#now() + backoff;
    this.#health.set(key, health);
    this.#log(
      `upstream ${endpoint.namespace}: endpoint ${endpoint.host} failing (${reason}); skipped for ${
        Math.round(backoff / 1000)
      } s`,
      "warn",
    );
  }

  succeeded(endpoint: UpstreamConfig): void {
    const key = keyOf(endpoint);
    if (!this.#health.has(key)) return;
    this.#health.delete(key);
    this.#log(`upstream ${endpoint.namespace}: endpoint ${endpoint.host} answers again`);
  }

  /** Whether the endpoint is in use (not skipped), for metrics. */
  isUp(endpoint: UpstreamConfig): boolean {
    return this.#downUntil(endpoint) <= this.#now();
  }

  #downUntil(endpoint: UpstreamConfig): number {
    return this.#health.get(keyOf(endpoint))?.downUntil ?? 0;
  }
}

function keyOf(endpoint: UpstreamConfig): string {
  return `${endpoint.namespace} ${endpoint.host}`;
}
