/**
 * The status page a browser gets at GET / (Accept: text/html): what is cached, how full, how
 * often it hits, how the upstreams answer, and the latest warnings. Plain server-rendered HTML
 * with inline CSS: no script, no build step, nothing fetched from elsewhere. Probes (no
 * text/html in Accept) keep getting the plain "ok".
 */

export interface StatusSnapshot {
  version: string;
  storage: string;
  startedAt: Date;
  now: Date;
  /** Present with --max-cache-size (the content index tracks sizes then). */
  cache?: {
    bytes: number;
    maxBytes: number;
    entries: number;
    evictions: number;
    repositories: { namespace: string; repository: string; tags: number; bytes: number }[];
  };
  /** Lookups by kind (manifest, blob) and result (hit, miss, stale, revalidated, uncached). */
  lookups: { kind: string; result: string; count: number }[];
  upstreams: {
    namespace: string;
    requests: number;
    errors: number;
    /** The lowest rate-limit headroom upstream reported, when it reports one. */
    remaining?: number;
    limit?: number;
  }[];
  recentErrors: { time: Date; level: string; message: string }[];
  /** With access rules (--auth-config), names are not shown to whoever opens the page. */
  repositoriesHidden?: boolean;
}

/** Whether the request is a browser's (HTML before anything else it accepts). */
export function wantsHtml(request: Request): boolean {
  return /(^|,)\s*text\/html\s*(;|,|$)/i.test(request.headers.get("accept") ?? "");
}

export function renderStatusPage(s: StatusSnapshot): string {
  const hits = sumOf(s.lookups, (l) => l.result === "hit" || l.result === "revalidated");
  const lookups = sumOf(s.lookups, () => true);
  const hitRate = lookups === 0 ? "no lookups yet" : `${percent(hits / lookups)}`;
  const rows = (kind: string) => {
    const of = s.lookups.filter((l) => l.kind === kind);
    const count = (result: string) => of.find((l) => l.result === result)?.count ?? 0;
    const total = sumOf(of, () => true);
    const kindHits = count("hit") + count("revalidated");
    return `<tr><th scope="row">${kind}s</th><td data-figure="${kind}-hits">${kindHits}</td><td>${
      count("miss")
    }</td><td>${count("stale")}</td><td>${total === 0 ? "-" : percent(kindHits / total)}</td></tr>`;
  };
  const cache = s.cache;
  const fill = cache && cache.maxBytes > 0 ? cache.bytes / cache.maxBytes : 0;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>oci-registry status</title>
<style>
body { font: 15px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #ddd; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.bar { background: #eee; height: 1.2em; width: 100%; border-radius: .3em; overflow: hidden; }
.bar > span { display: block; height: 100%; background: ${fill > 0.9 ? "#c0392b" : "#2e86c1"}; }
.muted { color: #777; } .warn { color: #a35d00; } .error { color: #c0392b; }
</style>
</head>
<body>
<h1>oci-registry ${escape(s.version)}</h1>
<p class="muted">Storage: ${escape(s.storage)}. Up since ${s.startedAt.toISOString()} (${
    duration(s.now.getTime() - s.startedAt.getTime())
  }). Page rendered ${s.now.toISOString()}.</p>

<h2>Cache</h2>
${
    cache
      ? `<p><span id="cache-fill" data-bytes="${cache.bytes}" data-max="${cache.maxBytes}">${
        bytes(cache.bytes)
      } of ${bytes(cache.maxBytes)} (${
        percent(fill)
      })</span>, ${cache.entries} objects, ${cache.evictions} images evicted.</p>
<div class="bar" role="img" aria-label="cache fill ${percent(fill)}"><span style="width: ${
        Math.min(100, fill * 100).toFixed(1)
      }%"></span></div>`
      : `<p class="muted">Cache size is tracked with <code>--max-cache-size</code>.</p>`
  }

<h2>Hit rate</h2>
<p>Overall: <strong id="hit-rate">${hitRate}</strong> of ${lookups} lookups.</p>
<table>
<thead><tr><th></th><th>hits</th><th>misses</th><th>stale</th><th>hit rate</th></tr></thead>
<tbody>${rows("manifest")}${rows("blob")}</tbody>
</table>

<h2>Repositories cached</h2>
${
    s.repositoriesHidden
      ? `<p class="muted">Not listed: access rules (<code>--auth-config</code>) decide who may see names.</p>`
      : cache && cache.repositories.length > 0
      ? `<table id="repositories">
<thead><tr><th>namespace</th><th>repository</th><th class="n">tags</th><th class="n">size</th></tr></thead>
<tbody>
${
        cache.repositories.slice(0, 200).map((r) =>
          `<tr><td>${escape(r.namespace)}</td><td>${
            escape(r.repository)
          }</td><td class="n">${r.tags}</td><td class="n" data-bytes="${r.bytes}">${
            bytes(r.bytes)
          }</td></tr>`
        ).join("\n")
      }
</tbody>
</table>${
        cache.repositories.length > 200
          ? `<p class="muted">and ${cache.repositories.length - 200} more.</p>`
          : ""
      }`
      : `<p class="muted">${cache ? "None yet." : "Listed with <code>--max-cache-size</code>."}</p>`
  }

<h2>Upstreams</h2>
${
    s.upstreams.length === 0
      ? `<p class="muted">No upstream asked yet.</p>`
      : `<table id="upstreams">
<thead><tr><th>namespace</th><th class="n">requests</th><th class="n">errors</th><th>health</th><th>rate limit left</th></tr></thead>
<tbody>
${
        s.upstreams.map((u) =>
          `<tr><td>${
            escape(u.namespace)
          }</td><td class="n">${u.requests}</td><td class="n">${u.errors}</td><td>${
            health(u.requests, u.errors)
          }</td><td>${
            u.remaining === undefined
              ? `<span class="muted">not reported</span>`
              : `${u.remaining}${u.limit === undefined ? "" : ` of ${u.limit}`}`
          }</td></tr>`
        ).join("\n")
      }
</tbody>
</table>`
  }

<h2>Recent warnings and errors</h2>
${
    s.recentErrors.length === 0
      ? `<p class="muted" id="recent-errors">None.</p>`
      : `<ul id="recent-errors">
${
        s.recentErrors.slice().reverse().map((e) =>
          `<li class="${
            e.level === "error" ? "error" : "warn"
          }">${e.time.toISOString()} ${e.level}: ${escape(e.message)}</li>`
        ).join("\n")
      }
</ul>`
  }
</body>
</html>
`;
}

function health(requests: number, errors: number): string {
  if (requests === 0) return `<span class="muted">idle</span>`;
  const share = errors / requests;
  if (share === 0) return "ok";
  return share < 0.1
    ? `<span class="warn">some errors (${percent(share)})</span>`
    : `<span class="error">failing (${percent(share)})</span>`;
}

function sumOf<T extends { count: number }>(items: T[], pick: (item: T) => boolean): number {
  return items.reduce((total, item) => total + (pick(item) ? item.count : 0), 0);
}

function percent(share: number): string {
  return `${(share * 100).toFixed(1)}%`;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

export function bytes(n: number): string {
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${UNITS[unit]}`;
}

function duration(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h`;
}

function escape(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
