/**
 * A small parser for the Prometheus text exposition format (version 0.0.4), so tests read
 * metrics as samples instead of matching strings: `# TYPE` lines give each family's type, and
 * every sample line is `name{label="value",...} number`.
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Scrape {
  samples: Sample[];
  /** Family name -> counter, gauge, ... as declared by `# TYPE`. */
  types: Map<string, string>;
  /** The one sample of `name` whose labels include `labels`; 0 when there is none. */
  value(name: string, labels?: Record<string, string>): number;
  /** The sum over every sample of `name` whose labels include `labels`. */
  sum(name: string, labels?: Record<string, string>): number;
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/;
const LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)/y;

export function parsePrometheus(text: string): Scrape {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const [number, line] of text.split("\n").entries()) {
    if (line.trim() === "") continue;
    if (line.startsWith("#")) {
      const type = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/.exec(line);
      if (type) types.set(type[1], type[2]);
      else if (!line.startsWith("# HELP ")) throw new Error(`line ${number + 1}: ${line}`);
      continue;
    }
    const match = SAMPLE.exec(line);
    if (!match) throw new Error(`line ${number + 1} is not a sample: ${line}`);
    const labels: Record<string, string> = {};
    const text = match[2] ?? "";
    LABEL.lastIndex = 0;
    while (LABEL.lastIndex < text.length) {
      const at = LABEL.lastIndex;
      const label = LABEL.exec(text);
      if (!label) throw new Error(`line ${number + 1}: bad labels at ${at}: ${line}`);
      labels[label[1]] = label[2].replace(/\\n/g, "\n").replace(/\\(["\\])/g, "$1");
    }
    const value = match[3] === "+Inf"
      ? Infinity
      : match[3] === "-Inf"
      ? -Infinity
      : Number(match[3]);
    if (Number.isNaN(value) && match[3] !== "NaN") throw new Error(`line ${number + 1}: ${line}`);
    if (!types.has(match[1]) && !types.has(match[1].replace(/_(total|bucket|sum|count)$/, ""))) {
      throw new Error(`line ${number + 1}: sample of ${match[1]} before its # TYPE`);
    }
    samples.push({ name: match[1], labels, value });
  }
  const matching = (name: string, labels: Record<string, string>) =>
    samples.filter((s) =>
      s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)
    );
  return {
    samples,
    types,
    value(name, labels = {}) {
      const found = matching(name, labels);
      if (found.length > 1) throw new Error(`${found.length} samples of ${name} match`);
      return found[0]?.value ?? 0;
    },
    sum(name, labels = {}) {
      return matching(name, labels).reduce((total, s) => total + s.value, 0);
    },
  };
}

/** GET /metrics from a running mirror, parsed. */
export async function scrape(mirror: { fetch(path: string): Promise<Response> }): Promise<Scrape> {
  const response = await mirror.fetch("/metrics");
  const text = await response.text();
  if (response.status !== 200) throw new Error(`/metrics answered ${response.status}: ${text}`);
  return parsePrometheus(text);
}
