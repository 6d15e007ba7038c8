/**
 * Prometheus metrics in the text exposition format, served at GET /metrics. A handful of
 * counters and gauges is all a mirror needs, so this is a few lines rather than a dependency.
 *
 * Every label value that a request can influence goes through a fold below, so that the number
 * of series is fixed by the configuration, not by clients: 33,000 invented methods once made
 * /metrics 3.8 MB and left the process 14 MB larger for good.
 */

type Labels = Record<string, string>;

/** The one value every label folds to when its real value is not one we name. */
export const OTHER = "other";

/** The methods HTTP defines for what a registry serves; any other token folds to "other". */
const METHODS = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);

/** The method label: one of the methods a registry client uses, or "other". */
export function methodLabel(method: string): string {
  return METHODS.has(method) ? method : OTHER;
}

/** The status label: a three-digit status code (what the handler produced), else "other". */
export function statusLabel(status: number): string {
  return Number.isInteger(status) && status >= 100 && status <= 599 ? String(status) : OTHER;
}

class Counter {
  readonly #values = new Map<string, { labels: Labels; value: number }>();
  constructor(readonly name: string, readonly help: string) {}

  inc(labels: Labels = {}, by = 1): void {
    const key = labelText(labels);
    const known = this.#values.get(key);
    if (known) known.value += by;
    else this.#values.set(key, { labels: { ...labels }, value: by });
  }

  get(labels: Labels = {}): number {
    return this.#values.get(labelText(labels))?.value ?? 0;
  }

  /** Every series so far (for the status page). */
  series(): { labels: Labels; value: number }[] {
    return [...this.#values.values()];
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    for (const [labels, { value }] of this.#values) lines.push(`${this.name}${labels} ${value}`);
    return lines.join("\n");
  }
}

function labelText(labels: Labels): string {
  const entries = Object.entries(labels);
  if (entries.length === 0) return "";
  const escape = (v: string) => v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
  return `{${entries.map(([k, v]) => `${k}="${escape(v)}"`).join(",")}}`;
}

/** Every metric the mirror exports. One instance per process (tests make their own). */
export class Metrics {
  readonly requests = new Counter(
    "oci_registry_http_requests_total",
    "HTTP requests answered, by method, endpoint kind and status.",
  );
  readonly cache = new Counter(
    "oci_registry_cache_requests_total",
    "Manifest and blob lookups, by namespace, kind and result (hit, miss, stale, revalidated; uncached: a miss passed through because the store is full).",
  );
  readonly upstream = new Counter(
    "oci_registry_upstream_requests_total",
    "Requests the mirror made upstream, by namespace, kind and method.",
  );
  readonly upstreamSeconds = new Counter(
    "oci_registry_upstream_response_seconds_total",
    "Seconds upstreams took to answer (until their response headers), by namespace and kind: divided by oci_registry_upstream_requests_total, the mean latency.",
  );
  readonly servedBytes = new Counter(
    "oci_registry_served_bytes_total",
    "Blob bytes answered to clients (as each response announced them), by source: cache (stored) or upstream (followed while it downloads).",
  );
  readonly upstreamErrors = new Counter(
    "oci_registry_upstream_errors_total",
    "Upstream requests that failed, by namespace, kind and error code (UNAVAILABLE: unreachable or 5xx; MANIFEST_UNKNOWN, BLOB_UNKNOWN: 404).",
  );
  readonly authFailures = new Counter(
    "oci_registry_auth_failures_total",
    "Refused authentications, by reason (bad_credentials, locked, bad_token, malformed).",
  );
  readonly passthroughChecks = new Counter(
    "oci_registry_passthrough_checks_total",
    "Checks of a client's own credentials against an auth: passthrough upstream, by namespace and result (allowed, unauthorized, denied; stale: upstream down, a recent pass honoured; unavailable: refused with 503; locked: not asked, 429, after refused credentials from that address and user).",
  );
  /** Namespaces named in labels as themselves (configured upstreams, the default). */
  readonly #namespaces = new Set<string>();
  readonly #labelled: { name: string; help: string; read: () => [Labels, number][] }[] = [];
  /** Sampled when rendered: current values (or running totals) that are owned elsewhere. */
  readonly #sampled: {
    name: string;
    help: string;
    type: "gauge" | "counter";
    read: () => number;
  }[] = [];

  /**
   * Lets these namespaces appear in labels as themselves. Only operators name them (the
   * upstream config, --default-namespace); a namespace a client invents (`?ns=`, a path prefix)
   * is counted as "other".
   */
  nameNamespaces(namespaces: Iterable<string>): void {
    for (const namespace of namespaces) this.#namespaces.add(namespace);
  }

  /** The namespace label: a named namespace, or "other". */
  namespaceLabel(namespace: string): string {
    return this.#namespaces.has(namespace) ? namespace : OTHER;
  }

  gauge(name: string, help: string, read: () => number): void {
    this.#sampled.push({ name, help, type: "gauge", read });
  }

  /**
   * A gauge with labels, sampled when rendered: `read` gives one value per label set. Its
   * label values must be bounded by the caller (configured namespaces, fixed words).
   */
  labelledGauge(name: string, help: string, read: () => [Labels, number][]): void {
    this.#labelled.push({ name, help, read });
  }

  /** A total that only grows, counted elsewhere (e.g. connections closed for idling). */
  sampledCounter(name: string, help: string, read: () => number): void {
    this.#sampled.push({ name, help, type: "counter", read });
  }

  render(): string {
    const sampled = this.#sampled.map(({ name, help, type, read }) =>
      `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${name} ${read()}`
    );
    const rss = Deno.memoryUsage().rss;
    return [
      this.requests.render(),
      this.cache.render(),
      this.upstream.render(),
      this.upstreamSeconds.render(),
      this.servedBytes.render(),
      this.upstreamErrors.render(),
      this.authFailures.render(),
      this.passthroughChecks.render(),
      ...sampled,
      ...this.#labelled.map(({ name, help, read }) =>
        [
          `# HELP ${name} ${help}`,
          `# TYPE ${name} gauge`,
          ...read().map(([labels, value]) => `${name}${labelText(labels)} ${value}`),
        ].join("\n")
      ),
      `# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes ${rss}`,
    ].join("\n") + "\n";
  }
}
