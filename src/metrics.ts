/**
 * Prometheus metrics in the text exposition format, served at GET /metrics. A handful of
 * counters and gauges is all a mirror needs, so this is a few lines rather than a dependency.
 */

type Labels = Record<string, string>;

class Counter {
  readonly #values = new Map<string, number>();
  constructor(readonly name: string, readonly help: string) {}

  inc(labels: Labels = {}, by = 1): void {
    const key = labelText(labels);
    this.#values.set(key, (this.#values.get(key) ?? 0) + by);
  }

  get(labels: Labels = {}): number {
    return this.#values.get(labelText(labels)) ?? 0;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    for (const [labels, value] of this.#values) lines.push(`${this.name}${labels} ${value}`);
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
    "Manifest and blob lookups, by kind and result (hit, miss, stale, revalidated).",
  );
  readonly upstream = new Counter(
    "oci_registry_upstream_requests_total",
    "Requests the mirror made upstream, by namespace, kind and method.",
  );
  /** Sampled when rendered: current values that are owned elsewhere. */
  readonly #gauges: { name: string; help: string; read: () => number }[] = [];

  gauge(name: string, help: string, read: () => number): void {
    this.#gauges.push({ name, help, read });
  }

  render(): string {
    const gauges = this.#gauges.map(({ name, help, read }) =>
      `# HELP ${name} ${help}\n# TYPE ${name} gauge\n${name} ${read()}`
    );
    const rss = Deno.memoryUsage().rss;
    return [
      this.requests.render(),
      this.cache.render(),
      this.upstream.render(),
      ...gauges,
      `# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes ${rss}`,
    ].join("\n") + "\n";
  }
}
