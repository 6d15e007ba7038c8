/**
 * Request-rate load generators: wrk for GET, ab for HEAD.
 *
 * wrk 4.1.0 (Debian 12) cannot measure HEAD: its parser waits for the body a HEAD response's
 * Content-Length announces, so every connection hangs (0 requests). ab (`-i`, apache2-utils)
 * handles HEAD with keep-alive; it is single-threaded, so its ceiling is lower than wrk's: the
 * nginx column of the same run shows where that ceiling is.
 */
import { run } from "../tests/support/tools.ts";

export interface LoadResult {
  tool: "wrk" | "ab";
  requests: number;
  /** Requests per second. */
  rps: number;
  p50Ms: number;
  p99Ms: number;
  /** Socket errors, timeouts, and non-2xx/3xx answers. */
  errors: number;
}

export interface LoadOptions {
  url: string;
  method: "GET" | "HEAD";
  headers: Record<string, string>;
  connections: number;
  durationS: number;
  /** Directory for the wrk script / ab percentile file. */
  scratchDir: string;
}

export async function load(opts: LoadOptions): Promise<LoadResult> {
  return opts.method === "GET" ? await wrk(opts) : await ab(opts);
}

async function wrk(opts: LoadOptions): Promise<LoadResult> {
  const script = `${opts.scratchDir}/wrk-${crypto.randomUUID()}.lua`;
  const lua = [
    `wrk.method = "${opts.method}"`,
    ...Object.entries(opts.headers).map(([k, v]) =>
      `wrk.headers[${JSON.stringify(k)}] = ${JSON.stringify(v)}`
    ),
    "done = function(summary, latency, requests)",
    "  local e = summary.errors",
    '  io.write(string.format("BENCH_RESULT %d %d %d %d %f %f\\n", summary.requests,',
    "    summary.duration, e.connect + e.read + e.write + e.timeout, e.status,",
    "    latency:percentile(50), latency:percentile(99)))",
    "end",
  ].join("\n");
  await Deno.writeTextFile(script, lua + "\n");
  try {
    const threads = Math.min(2, navigator.hardwareConcurrency || 2);
    const result = await run("wrk", [
      `-t${threads}`,
      `-c${opts.connections}`,
      `-d${opts.durationS}s`,
      "--timeout",
      "5s",
      "-s",
      script,
      opts.url,
    ], { timeoutMs: (opts.durationS + 30) * 1000 });
    const match = /BENCH_RESULT (\d+) (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+)/.exec(result.stdout);
    if (!match) {
      throw new Error(
        `wrk gave no result (exit ${result.code}):\n${result.stdout}${result.stderr}`,
      );
    }
    const [requests, durationUs, socketErrors, statusErrors] = match.slice(1, 5).map(Number);
    return {
      tool: "wrk",
      requests,
      rps: requests / (durationUs / 1e6),
      p50Ms: Number(match[5]) / 1000,
      p99Ms: Number(match[6]) / 1000,
      errors: socketErrors + statusErrors,
    };
  } finally {
    await Deno.remove(script).catch(() => {});
  }
}

async function ab(opts: LoadOptions): Promise<LoadResult> {
  const csv = `${opts.scratchDir}/ab-${crypto.randomUUID()}.csv`;
  const args = ["-q", "-k", "-c", String(opts.connections), "-t", String(opts.durationS)];
  // -t implies -n 50000; a later -n lifts that cap so the time limit decides.
  args.push("-n", "100000000", "-s", "10", "-e", csv);
  if (opts.method === "HEAD") args.push("-i");
  for (const [k, v] of Object.entries(opts.headers)) args.push("-H", `${k}: ${v}`);
  args.push(opts.url);
  try {
    const result = await run("ab", args, { timeoutMs: (opts.durationS + 30) * 1000 });
    const number = (label: string) => {
      const match = new RegExp(`^${label}:\\s+([\\d.]+)`, "m").exec(result.stdout);
      return match ? Number(match[1]) : undefined;
    };
    const rps = number("Requests per second");
    const requests = number("Complete requests");
    if (rps === undefined || requests === undefined) {
      throw new Error(`ab gave no result (exit ${result.code}):\n${result.stdout}${result.stderr}`);
    }
    const text = await Deno.readTextFile(csv).catch(() => "");
    const percentile = (p: number) => {
      const match = new RegExp(`^${p},([\\d.]+)`, "m").exec(text);
      return match ? Number(match[1]) : NaN;
    };
    return {
      tool: "ab",
      requests,
      rps,
      p50Ms: percentile(50),
      p99Ms: percentile(99),
      errors: (number("Failed requests") ?? 0) + (number("Non-2xx responses") ?? 0),
    };
  } finally {
    await Deno.remove(csv).catch(() => {});
  }
}
