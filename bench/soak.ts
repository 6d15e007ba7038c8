/**
 * The soak: mixed pulls for minutes over a working set twice the cache bound, against a real
 * mirror process and a real docker-registry. What it shows: resident memory stays flat, the
 * cache stays within its bound (give or take what is being read), and no response is an error. Every blob is hashed by the client, so a wrong byte is an error too.
 */
import { createHash } from "node:crypto";
import { buildImage, type Image, pushImage } from "../tests/support/images.ts";
import { parsePrometheus } from "../tests/support/prometheus.ts";
import type { Upstream } from "../tests/support/upstream.ts";
import type { Row } from "./report.ts";
import { readMemory, startMirror } from "./servers.ts";

const MiB = 1 << 20;

export interface SoakPlan {
  seconds: number;
  images: number;
  /** Each image: one layer of this many random bytes (uncompressed). */
  layerSize: number;
  clients: number;
}

export interface SoakResult {
  rows: Row[];
  notes: string[];
}

interface Sample {
  at: number;
  rss: number;
  cacheBytes: number;
}

export async function soak(
  upstream: Upstream,
  plan: SoakPlan,
  progress: (message: string) => void,
): Promise<SoakResult> {
  const images: Image[] = [];
  for (let i = 0; i < plan.images; i++) {
    const image = buildImage({ layers: [{ size: plan.layerSize, gzip: false }] });
    images.push(await pushImage(upstream, `soak/app${i}`, "1", image));
  }
  const workingSet = images.reduce(
    (sum, image) => sum + image.layers[0].size + image.config.size + image.manifest.size,
    0,
  );
  const bound = Math.floor(workingSet / 2);
  // Every image here is pulled every few seconds: with the default grace (1m) nothing could
  // go. Readers in progress stay protected whatever the grace.
  const grace = "0s";
  const server = await startMirror({
    upstreamHost: upstream.host,
    label: "oci-registry (soak)",
    extraArgs: ["--max-cache-size", String(bound), "--eviction-grace", grace],
  });
  const base = `${server.url}${server.prefix}`;
  const counts = { pulls: 0, requests: 0, errors: 0, bytes: 0 };
  const errors: string[] = [];
  const samples: Sample[] = [];
  const started = performance.now();
  const deadline = started + plan.seconds * 1000;
  const scrape = async () => parsePrometheus(await (await fetch(`${server.url}/metrics`)).text());
  const sampler = setInterval(async () => {
    try {
      const metrics = await scrape();
      samples.push({
        at: (performance.now() - started) / 1000,
        rss: readMemory(server.pids).rss,
        cacheBytes: metrics.value("oci_registry_cache_size_bytes"),
      });
    } catch { /* the next sample will do */ }
  }, 2000);
  const get = async (path: string, accept?: string) => {
    counts.requests++;
    const response = await fetch(`${base}${path}`, accept ? { headers: { accept } } : {});
    const body = new Uint8Array(await response.arrayBuffer());
    if (response.status !== 200) throw new Error(`${path}: ${response.status}`);
    counts.bytes += body.byteLength;
    return body;
  };
  const client = async (seed: number) => {
    let n = seed;
    while (performance.now() < deadline) {
      // A skewed mix: low-numbered images are pulled more often, as in real fleets.
      n = (n * 1103515245 + 12345) % 2147483648;
      const pick = Math.floor(((n / 2147483648) ** 2) * images.length);
      const image = images[pick];
      try {
        await get(`soak/app${pick}/manifests/1`, image.mediaType);
        for (const blob of [image.config, ...image.layers]) {
          const bytes = await get(`soak/app${pick}/blobs/${blob.digest}`);
          const digest = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
          if (digest !== blob.digest) throw new Error(`${blob.digest}: got ${digest}`);
        }
        counts.pulls++;
        await new Promise((resolve) => setTimeout(resolve, 50)); // a client between pulls
      } catch (e) {
        counts.errors++;
        if (errors.length < 5) errors.push((e as Error).message);
      }
    }
  };
  progress(
    `soak: ${plan.seconds} s, ${plan.clients} clients, ${images.length} images of ${
      plan.layerSize / MiB
    } MiB, working set ${(workingSet / MiB).toFixed(0)} MiB, bound ${(bound / MiB).toFixed(0)} MiB`,
  );
  try {
    await Promise.all(Array.from({ length: plan.clients }, (_, i) => client(i + 1)));
  } finally {
    clearInterval(sampler);
  }
  const last = await scrape();
  await server.stop();
  const minute = samples.filter((s) => s.at >= Math.min(60, plan.seconds / 4));
  const first = minute[0] ?? samples[0];
  const end = samples[samples.length - 1];
  const peakCache = Math.max(...samples.map((s) => s.cacheBytes));
  const rssGrowth = (end.rss - first.rss) / MiB;
  const mb = (bytes: number) => Math.round(bytes / MiB * 10) / 10;
  const rows: Row[] = [
    {
      measure: `Soak ${plan.seconds} s: pulls (${plan.clients} clients, working set 2x the bound)`,
      unit: "pulls",
      oci: counts.pulls,
    },
    {
      measure: "Soak: error responses or wrong bytes",
      unit: "count",
      oci: counts.errors,
      lowerIsBetter: true,
      target: "0",
      met: counts.errors === 0,
    },
    {
      measure: `Soak: peak cache size (bound ${mb(bound)} MB, --eviction-grace ${grace})`,
      unit: "MB",
      oci: mb(peakCache),
      lowerIsBetter: true,
      // What the clients are reading at that moment cannot go (one image each at most).
      target: `<= bound + ${plan.clients} images being read`,
      met: peakCache <= bound + plan.clients * plan.layerSize * 1.05,
    },
    {
      measure: `Soak: RSS from ${first.at.toFixed(0)} s to the end`,
      unit: "MB",
      oci: mb(end.rss),
      text: { oci: `${mb(first.rss)} -> ${mb(end.rss)}` },
      lowerIsBetter: true,
      target: "grows < 10 MB",
      met: rssGrowth < 10,
    },
    {
      measure: "Soak: images evicted",
      unit: "count",
      oci: last.value("oci_registry_cache_evictions_total"),
    },
  ];
  const notes = [
    `Soak: ${counts.requests} requests, ${mb(counts.bytes)} MB served; cache at the end ${
      mb(last.value("oci_registry_cache_size_bytes"))
    } MB; ${samples.length} samples every 2 s.`,
    ...errors.map((e) => `Soak error: ${e}`),
  ];
  return { rows, notes };
}
