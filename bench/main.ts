/**
 * `deno task bench`: oci-registry side by side with CNCF distribution 2.8.2 in proxy mode (the
 * peer) and nginx sendfile (the limit), in one run, on loopback. Prints a markdown table of
 * medians and ratios to stdout and writes it to bench/results.md; progress goes to stderr.
 *
 *   deno task bench                  full run (1 GiB blobs, 3-5 repetitions; ~6-8 minutes)
 *   deno task bench --quick          smoke run (small sizes, 1-2 repetitions; ~1-2 minutes)
 *   deno task bench --only blob,cold run some sections only
 *   deno task bench --only soak      10 minutes of mixed pulls over twice the cache bound
 *                                    (--quick: 1 minute); never part of a run by default
 *
 * Sections: startup, blob, s3, manifest, cold, concurrent, guard, push, auth, soak (`memory` =
 * startup,blob,manifest).
 * Every server is a fresh process with fresh storage per section (per repetition for the cold
 * ones); repetitions rotate the order of the servers so background noise is shared fairly.
 */
import { parseArgs } from "node:util";
import { httpGet, mibPerSecond, receiverName } from "./http.ts";
import { load, type LoadResult } from "./load.ts";
import { fmt, median, type Row, runs, table } from "./report.ts";
import { soak } from "./soak.ts";
import {
  addBlob,
  addManifest,
  mirrorCommand,
  onStopAll,
  readMemory,
  RssSampler,
  type Server,
  shutdown,
  startDistributionProxy,
  startMirror,
  startNginx,
  stopAll,
} from "./servers.ts";
import { buildImage, MediaTypes, pushImage, pushRandomBlob } from "../tests/support/images.ts";
import { startUpstream, type Upstream } from "../tests/support/upstream.ts";
import { delay, REPO_ROOT, run, tempDir, which } from "../tests/support/tools.ts";
import { installPackages } from "../tests/support/setup.ts";

const MiB = 1 << 20;
const SECTIONS = [
  "startup",
  "blob",
  "s3",
  "manifest",
  "cold",
  "concurrent",
  "guard",
  "push",
  "auth",
  "soak",
] as const;
type Section = typeof SECTIONS[number];
const ALIASES: Record<string, Section[]> = { memory: ["startup", "blob", "manifest"] };

const MANIFEST_ACCEPT = [
  MediaTypes.ociManifest,
  MediaTypes.ociIndex,
  MediaTypes.dockerManifest,
  MediaTypes.dockerManifestList,
].join(", ");

interface Plan {
  quick: boolean;
  blobSize: number;
  blobReps: number;
  s3Reps: number;
  manifestReps: number;
  manifestSeconds: number;
  connections: number;
  coldSize: number;
  coldReps: number;
  concurrentSize: number;
  concurrentClients: number[];
  concurrentReps: number;
  startupReps: number;
  /** The soak (only with --only soak: it takes minutes). */
  soakSeconds: number;
}

const FULL: Plan = {
  quick: false,
  blobSize: 1024 * MiB,
  blobReps: 5,
  s3Reps: 3,
  manifestReps: 3,
  manifestSeconds: 5,
  connections: 50,
  coldSize: 256 * MiB,
  coldReps: 3,
  concurrentSize: 32 * MiB,
  concurrentClients: [20, 100],
  concurrentReps: 3,
  startupReps: 5,
  soakSeconds: 600,
};

const QUICK: Plan = {
  quick: true,
  blobSize: 256 * MiB,
  blobReps: 2,
  s3Reps: 1,
  manifestReps: 1,
  manifestSeconds: 2,
  connections: 50,
  coldSize: 64 * MiB,
  coldReps: 1,
  concurrentSize: 8 * MiB,
  concurrentClients: [20, 100],
  concurrentReps: 1,
  startupReps: 2,
  soakSeconds: 60,
};

/** The whole run is killed after this long, whatever happens. */
const RUN_LIMIT_MS = 40 * 60_000;

const rows: Row[] = [];
const notes: string[] = [];

function progress(message: string) {
  const time = new Date().toISOString().slice(11, 19);
  console.error(`[bench ${time}] ${message}`);
}

function sizeLabel(bytes: number): string {
  return bytes >= 1024 * MiB ? `${bytes / (1024 * MiB)} GiB` : `${bytes / MiB} MiB`;
}

function mb(bytes: number): number {
  return bytes / 1e6;
}

/** `servers` rotated by `n`: repetition n starts with a different server. */
function rotate<T>(servers: T[], n: number): T[] {
  const k = n % servers.length;
  return [...servers.slice(k), ...servers.slice(0, k)];
}

async function getOk(
  url: string,
  size: number,
  label: string,
  bufferSize?: number,
  headers?: Record<string, string>,
) {
  const r = await httpGet(url, { timeoutMs: 300_000, bufferSize, headers });
  if (r.status !== 200 || r.bytes !== size) {
    throw new Error(`${label}: GET ${url} gave ${r.status} with ${r.bytes} of ${size} bytes`);
  }
  return r;
}

/**
 * Pushing the big blob to a hosted repository, against distribution 2.8.2 (the upstream
 * fixture: a plain registry) in the same run: monolithic (POST, then PUT with the body) and
 * streamed (POST, one PATCH with the body, then PUT), the way docker and containerd push.
 * curl streams the file (`-T`); each push goes to a repository of its own.
 */
async function push(fx: Fixture, plan: Plan) {
  const big = fx.big!;
  const label = sizeLabel(big.size);
  progress(`push: ${label} monolithic and streamed x${plan.blobReps}`);
  const mirror = await startMirror({
    upstreamHost: fx.upstream.host,
    extraArgs: ["--hosted", "push", "--allow-anonymous-push"],
  });
  try {
    const targets = [
      { kind: "oci-registry", url: mirror.url, pids: mirror.pids, repo: "push/bench" },
      {
        kind: "distribution",
        url: fx.upstream.url,
        pids: upstreamPids(fx.upstream),
        repo: "push/bench",
      },
    ];
    const curl = async (args: string[]) => {
      // No `Expect: 100-continue`: the body goes out at once, as registry clients send it.
      const r = await run("curl", ["-s", "-o", "/dev/null", "-D", "-", "-H", "Expect:", ...args], {
        timeoutMs: 300_000,
      });
      const status = Number(/^HTTP\/1\.1 (\d{3})/m.exec(r.stdout)?.[1] ?? 0);
      const location = /^location: *(.+?)\r?$/im.exec(r.stdout)?.[1];
      return { status, location };
    };
    const absolute = (base: string, location: string) => new URL(location, base).href;
    const withDigest = (url: string) =>
      `${url}${url.includes("?") ? "&" : "?"}digest=${big.digest}`;
    for (const mode of ["monolithic", "streamed"] as const) {
      const speeds: Record<string, number[]> = { "oci-registry": [], distribution: [] };
      const peaks: Record<string, { before: number; peak: number }> = {};
      for (let rep = 0; rep < plan.blobReps; rep++) {
        for (const target of rotate(targets, rep)) {
          const repo = `${target.repo}${mode}${rep}`;
          const post = await curl(["-X", "POST", `${target.url}/v2/${repo}/blobs/uploads/`]);
          if (post.status !== 202 || !post.location) {
            throw new Error(`${target.kind}: POST answered ${post.status}`);
          }
          let url = absolute(target.url, post.location);
          const sampler = new RssSampler(target.pids);
          const t = performance.now();
          if (mode === "streamed") {
            const patch = await curl(["-X", "PATCH", "-T", big.file, url]);
            if (patch.status !== 202 || !patch.location) {
              throw new Error(`${target.kind}: PATCH answered ${patch.status}`);
            }
            url = absolute(target.url, patch.location);
            const put = await curl(["-X", "PUT", withDigest(url)]);
            if (put.status !== 201) throw new Error(`${target.kind}: PUT answered ${put.status}`);
          } else {
            const put = await curl(["-X", "PUT", "-T", big.file, withDigest(url)]);
            if (put.status !== 201) throw new Error(`${target.kind}: PUT answered ${put.status}`);
          }
          const ms = performance.now() - t;
          const peak = sampler.stop();
          speeds[target.kind].push(mibPerSecond(big.size, ms));
          const seen = peaks[target.kind] ?? { before: sampler.before, peak: 0 };
          peaks[target.kind] = {
            before: Math.min(seen.before, sampler.before),
            peak: Math.max(seen.peak, peak),
          };
        }
      }
      const oci = median(speeds["oci-registry"]);
      const d = median(speeds.distribution);
      rows.push({
        measure: `${label} blob push, ${mode}, filesystem`,
        unit: "MiB/s",
        oci,
        dist: d,
        runs: { oci: speeds["oci-registry"], dist: speeds.distribution },
        target: ">= 1.0x dist",
        met: oci >= d,
      });
      const o = peaks["oci-registry"];
      const di = peaks.distribution;
      rows.push({
        measure: `RSS peak during ${label} ${mode} push (added)`,
        unit: "MB",
        oci: mb(o.peak),
        dist: mb(di.peak),
        text: {
          oci: `${fmt(mb(o.peak))} (+${fmt(mb(o.peak - o.before))})`,
          dist: `${fmt(mb(di.peak))} (+${fmt(mb(di.peak - di.before))})`,
        },
        lowerIsBetter: true,
        target: "adds < 64 MB",
        met: mb(o.peak - o.before) < 64,
      });
    }
  } finally {
    await mirror.stop();
  }
}

/** The upstream fixture's docker-registry process (found by its config in the fixture's dir). */
function upstreamPids(upstream: Upstream): number[] {
  const pids: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const cmdline = Deno.readTextFileSync(`/proc/${entry.name}/cmdline`);
      if (cmdline.includes("docker-registry") && cmdline.includes(upstream.dir)) {
        pids.push(Number(entry.name));
      }
    } catch { /* gone */ }
  }
  return pids;
}

// ---------------------------------------------------------------------------------------------
// Tools

async function ensureTools() {
  const needed: Record<string, string> = {
    "/usr/bin/docker-registry": "docker-registry",
    "/usr/sbin/nginx": "nginx-light",
    "/usr/bin/wrk": "wrk",
    "/usr/bin/ab": "apache2-utils",
  };
  const missing = [
    ...new Set(Object.entries(needed).filter(([bin]) => !which(bin)).map(([, p]) => p)),
  ];
  if (missing.length > 0) await installPackages(missing);
  const still = Object.keys(needed).filter((bin) => !which(bin));
  if (still.length > 0) {
    throw new Error(`missing ${still.join(", ")} (apt-get install -y ${missing.join(" ")})`);
  }
}

// ---------------------------------------------------------------------------------------------
// Sections

interface Fixture {
  upstream: Upstream;
  /** Repository + blob paths on the upstream. */
  big?: { repo: string; digest: string; size: number; file: string };
  cold?: { repo: string; digest: string; size: number };
  concurrent?: { repo: string; digest: string; size: number };
  manifest?: { repo: string; tag: string; digest: string; bytes: Uint8Array };
}

function upstreamBlobFile(upstream: Upstream, digest: string): string {
  const hex = digest.slice("sha256:".length);
  return `${upstream.dir}/data/docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`;
}

async function startup(fx: Fixture, plan: Plan) {
  progress(`startup: ${plan.startupReps} starts of each server`);
  // One untimed start so the mirror's module cache is warm, like every later start.
  await (await startMirror({ upstreamHost: fx.upstream.host })).stop();
  const times: Record<string, number[]> = { oci: [], dist: [], nginx: [] };
  const idle: Record<string, number[]> = { oci: [], dist: [], nginx: [] };
  for (let rep = 0; rep < plan.startupReps; rep++) {
    const servers: [string, Server][] = [];
    try {
      for (const key of rotate(["oci", "dist", "nginx"], rep)) {
        const server = key === "oci"
          ? await startMirror({ upstreamHost: fx.upstream.host })
          : key === "dist"
          ? await startDistributionProxy(fx.upstream.url)
          : await startNginx();
        servers.push([key, server]);
        times[key].push(server.startupMs);
      }
      await delay(1_000);
      for (const [key, server] of servers) idle[key].push(readMemory(server.pids).rss);
    } finally {
      await Promise.all(servers.map(([, s]) => s.stop()));
    }
  }
  rows.push({
    measure: "Start-up to first served request",
    unit: "ms",
    oci: median(times.oci),
    dist: median(times.dist),
    limit: median(times.nginx),
    runs: { oci: times.oci, dist: times.dist, limit: times.nginx },
    lowerIsBetter: true,
  });
  rows.push({
    measure: "RSS idle (after start + 1 s)",
    unit: "MB",
    oci: mb(median(idle.oci)),
    dist: mb(median(idle.dist)),
    limit: mb(median(idle.nginx)),
    runs: { oci: idle.oci.map(mb), dist: idle.dist.map(mb), limit: idle.nginx.map(mb) },
    lowerIsBetter: true,
    target: "< 60 MB",
    met: mb(median(idle.oci)) < 60,
  });
}

async function blob(fx: Fixture, plan: Plan) {
  const big = fx.big!;
  const label = sizeLabel(big.size);
  progress(`blob: warm ${label} GET x${plan.blobReps}`);
  const mirror = await startMirror({ upstreamHost: fx.upstream.host });
  const dist = await startDistributionProxy(fx.upstream.url);
  const nginx = await startNginx();
  try {
    await addBlob(nginx, big.digest, big.file);
    const path = `${big.repo}/blobs/${big.digest}`;
    const urlOf = (s: Server) => `${s.url}${s.prefix}${path}`;

    // Cold pull-through first (fills both caches), then one untimed warm GET each.
    const coldPeak: Record<string, { before: number; peak: number }> = {};
    for (const server of [mirror, dist]) {
      const sampler = new RssSampler(server.pids);
      await getOk(urlOf(server), big.size, server.label);
      coldPeak[server.kind] = { before: sampler.before, peak: sampler.stop() };
    }
    for (const server of [mirror, dist, nginx]) await getOk(urlOf(server), big.size, server.label);

    const speeds: Record<string, number[]> = { "oci-registry": [], distribution: [], nginx: [] };
    const warm: Record<string, { before: number; peak: number }> = {};
    for (const server of [mirror, dist, nginx]) {
      warm[server.kind] = { before: readMemory(server.pids).rss, peak: 0 };
    }
    for (let rep = 0; rep < plan.blobReps; rep++) {
      for (const server of rotate([mirror, dist, nginx], rep)) {
        const sampler = new RssSampler(server.pids);
        const r = await getOk(urlOf(server), big.size, server.label);
        const peak = sampler.stop();
        warm[server.kind].peak = Math.max(warm[server.kind].peak, peak);
        speeds[server.kind].push(mibPerSecond(r.bytes, r.ms));
      }
    }
    const oci = median(speeds["oci-registry"]);
    const d = median(speeds.distribution);
    const n = median(speeds.nginx);
    rows.push({
      measure: `Warm ${label} blob GET, filesystem`,
      unit: "MiB/s",
      oci,
      dist: d,
      limit: n,
      runs: { oci: speeds["oci-registry"], dist: speeds.distribution, limit: speeds.nginx },
      target: ">= 1.0x dist, >= 0.6x nginx",
      met: oci >= d && oci >= 0.6 * n,
    });
    for (const [what, m] of [["cold pull-through", coldPeak], ["warm GETs", warm]] as const) {
      const o = m["oci-registry"];
      const di = m.distribution;
      const ng = m.nginx;
      rows.push({
        measure: `RSS peak during ${label} ${what} (added)`,
        unit: "MB",
        oci: mb(o.peak),
        dist: mb(di.peak),
        limit: ng ? mb(ng.peak) : undefined,
        text: {
          oci: `${fmt(mb(o.peak))} (+${fmt(mb(o.peak - o.before))})`,
          dist: `${fmt(mb(di.peak))} (+${fmt(mb(di.peak - di.before))})`,
          limit: ng ? `${fmt(mb(ng.peak))} (+${fmt(mb(ng.peak - ng.before))})` : "",
        },
        lowerIsBetter: true,
        target: "adds < 32 MB",
        met: mb(o.peak - o.before) < 32,
      });
    }
  } finally {
    await Promise.all([mirror.stop(), dist.stop(), nginx.stop()]);
  }
}

async function s3(fx: Fixture, plan: Plan) {
  const big = fx.big!;
  const label = sizeLabel(big.size);
  const s3File = `${REPO_ROOT}/src/storage/s3.ts`;
  try {
    await Deno.stat(s3File);
  } catch {
    notes.push("S3 rows skipped: src/storage/s3.ts is not there yet.");
    return;
  }
  progress(`s3: warm ${label} GET through s3rver x${plan.s3Reps}`);
  const { startS3rver } = await import("../tests/support/s3rver.ts");
  let s3rver: Awaited<ReturnType<typeof startS3rver>> | undefined;
  const servers: Server[] = [];
  let forget = () => {};
  try {
    // Registered before it exists, so Ctrl-C during its start-up still stops it.
    const starting = startS3rver("bench");
    forget = onStopAll(async () => (await starting.catch(() => undefined))?.stop());
    s3rver = await starting;
    const s3Args = (redirect: boolean) => (dir: { join(...s: string[]): string }) => [
      "s3",
      "--bucket",
      s3rver!.bucket,
      "--endpoint",
      s3rver!.endpoint,
      "--access-key",
      "S3RVER",
      "--secret-key",
      "S3RVER",
      "--spool-dir",
      dir.join("spool"),
      ...(redirect ? ["--s3-redirect"] : []),
    ];
    const plain = await startMirror({
      upstreamHost: fx.upstream.host,
      storageArgs: s3Args(false),
      label: "oci-registry s3",
    });
    servers.push(plain);
    const redirect = await startMirror({
      upstreamHost: fx.upstream.host,
      storageArgs: s3Args(true),
      label: "oci-registry s3 redirect",
    });
    servers.push(redirect);
    const url = (s: Server) => `${s.url}${s.prefix}${big.repo}/blobs/${big.digest}`;
    const started = performance.now();
    const coldSampler = new RssSampler(plain.pids);
    await getOk(url(plain), big.size, plain.label); // pull-through into the bucket
    const cold = { before: coldSampler.before, peak: coldSampler.stop() };
    progress(`s3: cold pull-through into s3rver took ${fmt(performance.now() - started)} ms`);
    rows.push({
      measure: `RSS peak during ${label} cold pull-through into S3 (added)`,
      unit: "MB",
      oci: mb(cold.peak),
      text: { oci: `${fmt(mb(cold.peak))} (+${fmt(mb(cold.peak - cold.before))})` },
      lowerIsBetter: true,
      target: "adds < 64 MB",
      met: mb(cold.peak - cold.before) < 64,
    });
    // The blob reaches S3 after the download was verified. s3rver's CompleteMultipartUpload is
    // not atomic (the object appears and grows while the parts are joined; real S3 is atomic),
    // so wait until the object is whole before measuring anything served from the bucket.
    const hex = big.digest.slice("sha256:".length);
    const objectUrl = `${s3rver.endpoint}/${s3rver.bucket}/blobs/sha256/${hex.slice(0, 2)}/${hex}`;
    const waitStarted = performance.now();
    for (let whole = 0; whole < 3;) {
      const r = await httpGet(objectUrl, { method: "HEAD", timeoutMs: 10_000 });
      whole = r.status === 200 && Number(r.headers.get("content-length")) === big.size
        ? whole + 1
        : 0;
      if (performance.now() - waitStarted > 180_000) {
        throw new Error(`the blob never appeared whole in the bucket (last: ${r.status})`);
      }
      await delay(200);
    }
    progress(`s3: object whole in the bucket ${fmt(performance.now() - waitStarted)} ms later`);
    for (const server of [plain, redirect]) await getOk(url(server), big.size, server.label);
    const first = await httpGet(url(redirect), { maxRedirects: 0 });
    const direct = first.status === 307 ? first.headers.get("location") : undefined;
    if (!direct) {
      notes.push(`--s3-redirect answered a blob GET with ${first.status}, not a 307 redirect.`);
    }
    const speeds: Record<string, number[]> = { plain: [], redirect: [], direct: [] };
    for (let rep = 0; rep < plan.s3Reps; rep++) {
      for (const which of rotate(["plain", "redirect", "direct"], rep)) {
        if (which === "direct" && !direct) continue;
        const target = which === "plain"
          ? url(plain)
          : which === "redirect"
          ? url(redirect)
          : direct!;
        const r = await getOk(target, big.size, `s3 ${which}`);
        speeds[which].push(mibPerSecond(r.bytes, r.ms));
      }
    }
    const blobRow = rows.find((r) =>
      r.measure.startsWith("Warm") && r.measure.endsWith("filesystem")
    );
    const s3Limit = speeds.direct.length ? median(speeds.direct) : undefined;
    for (const which of ["plain", "redirect"] as const) {
      const oci = median(speeds[which]);
      rows.push({
        measure: `Warm ${label} blob GET, S3 (s3rver)${
          which === "redirect" ? " --s3-redirect" : ""
        }`,
        unit: "MiB/s",
        oci,
        dist: blobRow?.dist,
        limit: blobRow?.limit,
        runs: { oci: speeds[which] },
        text: {
          dist: blobRow?.dist !== undefined ? `${fmt(blobRow.dist)} (fs)` : "",
          limit: blobRow?.limit !== undefined ? `${fmt(blobRow.limit)} (fs)` : "",
        },
        target: ">= 1.0x dist, >= 0.6x nginx",
        met: blobRow?.dist !== undefined && blobRow.limit !== undefined
          ? oci >= blobRow.dist && oci >= 0.6 * blobRow.limit
          : undefined,
      });
    }
    if (s3Limit !== undefined) {
      notes.push(
        `S3 rows compare with the filesystem peers of the row above (distribution and nginx on ` +
          `local disk). s3rver itself serves the object at ${fmt(s3Limit)} MiB/s (presigned GET ` +
          `straight to s3rver, no mirror): that is the ceiling of both S3 rows on this machine.`,
      );
    }
  } catch (e) {
    notes.push(`S3 rows skipped: ${(e as Error).message.split("\n")[0]}`);
    for (const server of servers) {
      const log = await server.log();
      if (log.trim()) progress(`${server.label} output (tail):\n${log.slice(-2000)}`);
    }
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
    await s3rver?.stop();
    forget();
  }
}

async function manifest(fx: Fixture, plan: Plan) {
  const m = fx.manifest!;
  progress(
    `manifest: GET/HEAD by tag/digest, ${plan.connections} connections, ${plan.manifestSeconds} s x${plan.manifestReps}`,
  );
  const scratch = await tempDir("oci-bench-load-");
  const mirror = await startMirror({ upstreamHost: fx.upstream.host });
  const dist = await startDistributionProxy(fx.upstream.url);
  const nginx = await startNginx();
  try {
    await addManifest(nginx, m.tag, m.bytes);
    await addManifest(nginx, m.digest, m.bytes);
    const servers = [mirror, dist, nginx];
    const url = (s: Server, ref: string) => `${s.url}${s.prefix}${m.repo}/manifests/${ref}`;
    for (const server of servers) {
      for (const ref of [m.tag, m.digest]) {
        for (let i = 0; i < 2; i++) { // the first fills the cache
          const r = await httpGet(url(server, ref), { headers: { accept: MANIFEST_ACCEPT } });
          if (r.status !== 200 || r.bytes !== m.bytes.length) {
            throw new Error(`${server.label}: manifest ${ref} gave ${r.status}, ${r.bytes} bytes`);
          }
        }
      }
    }
    const variants = [
      ["GET", "tag"],
      ["GET", "digest"],
      ["HEAD", "tag"],
      ["HEAD", "digest"],
    ] as const;
    const results = new Map<string, LoadResult[]>();
    const peaks: Record<string, { before: number; peak: number }> = {};
    for (const server of servers) {
      peaks[server.kind] = { before: readMemory(server.pids).rss, peak: 0 };
    }
    for (let rep = 0; rep < plan.manifestReps; rep++) {
      for (const [method, kind] of variants) {
        for (const server of rotate(servers, rep)) {
          const sampler = new RssSampler(server.pids, 20);
          const result = await load({
            url: url(server, kind === "tag" ? m.tag : m.digest),
            method,
            headers: { Accept: MANIFEST_ACCEPT },
            connections: plan.connections,
            durationS: plan.manifestSeconds,
            scratchDir: scratch.path,
          });
          const peak = sampler.stop();
          peaks[server.kind].peak = Math.max(peaks[server.kind].peak, peak);
          const key = `${method} ${kind} ${server.kind}`;
          results.set(key, [...(results.get(key) ?? []), result]);
          if (result.errors > 0) {
            notes.push(
              `${server.label} ${method} by ${kind}: ${result.errors} errors of ${result.requests} requests (rep ${
                rep + 1
              }).`,
            );
          }
        }
      }
    }
    for (const [method, kind] of variants) {
      const get = (k: string) => results.get(`${method} ${kind} ${k}`)!;
      const rps = (k: string) => median(get(k).map((r) => r.rps));
      const p99 = (k: string) => median(get(k).map((r) => r.p99Ms));
      const tool = get("oci-registry")[0].tool;
      const oci = rps("oci-registry");
      const d = rps("distribution");
      rows.push({
        measure: `Manifest ${method} by ${kind}, ${plan.connections} conns (${tool})`,
        unit: "req/s",
        oci,
        dist: d,
        limit: rps("nginx"),
        runs: {
          oci: get("oci-registry").map((r) => r.rps),
          dist: get("distribution").map((r) => r.rps),
          limit: get("nginx").map((r) => r.rps),
        },
        target: method === "GET" ? ">= 10x dist" : undefined,
        met: method === "GET" ? oci >= 10 * d : undefined,
      });
      rows.push({
        measure: `Manifest ${method} by ${kind}: p99 latency`,
        unit: "ms",
        oci: p99("oci-registry"),
        dist: p99("distribution"),
        limit: p99("nginx"),
        runs: {
          oci: get("oci-registry").map((r) => r.p99Ms),
          dist: get("distribution").map((r) => r.p99Ms),
          limit: get("nginx").map((r) => r.p99Ms),
        },
        lowerIsBetter: true,
        target: "< 20 ms",
        met: p99("oci-registry") < 20,
      });
    }
    const o = peaks["oci-registry"];
    const di = peaks.distribution;
    const ng = peaks.nginx;
    rows.push({
      measure: `RSS peak under ${plan.connections}-connection load`,
      unit: "MB",
      oci: mb(o.peak),
      dist: mb(di.peak),
      limit: mb(ng.peak),
      lowerIsBetter: true,
      target: "< 120 MB",
      met: mb(o.peak) < 120,
    });
  } finally {
    await Promise.all([mirror.stop(), dist.stop(), nginx.stop()]);
    await scratch.cleanup();
  }
}

/**
 * What the connection guard (src/http/connections.ts: per-connection serving, timeouts, cap)
 * costs: the same mirror with it and with `--unguarded-connections` (plain Deno.serve), warm
 * blob and manifest load, alternating per repetition. The limit column is the unguarded one.
 */
async function guard(fx: Fixture, plan: Plan) {
  const big = fx.big!;
  const m = fx.manifest!;
  progress(`guard: warm ${sizeLabel(big.size)} GET and manifest load, with and without`);
  const scratch = await tempDir("oci-bench-guard-");
  const guarded = await startMirror({ upstreamHost: fx.upstream.host });
  const plain = await startMirror({
    upstreamHost: fx.upstream.host,
    label: "oci-registry unguarded",
    extraArgs: ["--unguarded-connections"],
  });
  try {
    const servers = [guarded, plain];
    const blobUrl = (s: Server) => `${s.url}${s.prefix}${big.repo}/blobs/${big.digest}`;
    const manifestUrl = (s: Server) => `${s.url}${s.prefix}${m.repo}/manifests/${m.tag}`;
    for (const server of servers) {
      await getOk(blobUrl(server), big.size, server.label); // fills the cache
      await getOk(blobUrl(server), big.size, server.label);
      await httpGet(manifestUrl(server), { headers: { accept: MANIFEST_ACCEPT } });
    }
    const speeds = new Map<Server, number[]>(servers.map((s) => [s, []]));
    for (let rep = 0; rep < plan.blobReps; rep++) {
      for (const server of rotate(servers, rep)) {
        const r = await getOk(blobUrl(server), big.size, server.label);
        speeds.get(server)!.push(mibPerSecond(r.bytes, r.ms));
      }
    }
    const loads = new Map<string, LoadResult[]>();
    for (let rep = 0; rep < plan.manifestReps; rep++) {
      for (const method of ["GET", "HEAD"] as const) {
        for (const server of rotate(servers, rep)) {
          const result = await load({
            url: manifestUrl(server),
            method,
            headers: { Accept: MANIFEST_ACCEPT },
            connections: plan.connections,
            durationS: plan.manifestSeconds,
            scratchDir: scratch.path,
          });
          const key = `${method} ${server.label}`;
          loads.set(key, [...(loads.get(key) ?? []), result]);
        }
      }
    }
    const blobOn = median(speeds.get(guarded)!);
    const blobOff = median(speeds.get(plain)!);
    rows.push({
      measure: `Guard cost: warm ${sizeLabel(big.size)} blob GET (limit = --unguarded-connections)`,
      unit: "MiB/s",
      oci: blobOn,
      limit: blobOff,
      runs: { oci: speeds.get(guarded)!, limit: speeds.get(plain)! },
      target: ">= 0.9x unguarded",
      met: blobOn >= 0.9 * blobOff,
    });
    for (const method of ["GET", "HEAD"] as const) {
      const on = loads.get(`${method} ${guarded.label}`)!;
      const off = loads.get(`${method} ${plain.label}`)!;
      const rps = (r: LoadResult[]) => median(r.map((x) => x.rps));
      const p99 = (r: LoadResult[]) => median(r.map((x) => x.p99Ms));
      rows.push({
        measure: `Guard cost: manifest ${method} by tag, ${plan.connections} conns (${on[0].tool})`,
        unit: "req/s",
        oci: rps(on),
        limit: rps(off),
        runs: { oci: on.map((r) => r.rps), limit: off.map((r) => r.rps) },
        target: ">= 0.9x unguarded",
        met: rps(on) >= 0.9 * rps(off),
      });
      rows.push({
        measure: `Guard cost: manifest ${method} by tag: p99 latency`,
        unit: "ms",
        oci: p99(on),
        limit: p99(off),
        runs: { oci: on.map((r) => r.p99Ms), limit: off.map((r) => r.p99Ms) },
        lowerIsBetter: true,
        target: "< 20 ms",
        met: p99(on) < 20,
      });
    }
  } finally {
    await Promise.all([guarded.stop(), plain.stop()]);
    await scratch.cleanup();
  }
}

/**
 * What client authentication costs on the warm path: the same mirror with --auth-config (the
 * client sends a Bearer token from the mirror's GET /token, checked on every request: HMAC,
 * expiry, scope, rules) and without, warm blob GETs alternating. The limit column is no auth.
 */
async function auth(fx: Fixture, plan: Plan) {
  const big = fx.big!;
  progress(`auth: warm ${sizeLabel(big.size)} GET with a token and without auth`);
  const scratch = await tempDir("oci-bench-auth-");
  const user = await run("htpasswd", ["-Bbn", "bench", "bench-pw"], { check: true });
  await Deno.writeTextFile(scratch.join("htpasswd"), user.stdout);
  await Deno.writeTextFile(
    scratch.join("auth.yaml"),
    "htpasswd: htpasswd\nanonymous_pull: false\ntoken:\n  ttl: 1h\nrules:\n" +
      '  - namespace: "*"\n    users: [bench]\n    actions: [pull]\n',
  );
  const on = await startMirror({
    upstreamHost: fx.upstream.host,
    label: "oci-registry auth",
    extraArgs: ["--auth-config", scratch.join("auth.yaml")],
  });
  const off = await startMirror({ upstreamHost: fx.upstream.host, label: "oci-registry no auth" });
  try {
    const blobUrl = (s: Server) => `${s.url}${s.prefix}${big.repo}/blobs/${big.digest}`;
    const scope = `repository:${on.prefix.slice(4)}${big.repo}:pull`;
    const tokenResponse = await fetch(`${on.url}/token?service=oci-registry&scope=${scope}`, {
      headers: { authorization: `Basic ${btoa("bench:bench-pw")}` },
    });
    const { token } = await tokenResponse.json();
    const headers = (s: Server) => s === on ? { authorization: `Bearer ${token}` } : undefined;
    const servers = [on, off];
    for (const server of servers) {
      await getOk(blobUrl(server), big.size, server.label, undefined, headers(server)); // fills
      await getOk(blobUrl(server), big.size, server.label, undefined, headers(server));
    }
    const speeds = new Map<Server, number[]>(servers.map((s) => [s, []]));
    for (let rep = 0; rep < plan.blobReps; rep++) {
      for (const server of rotate(servers, rep)) {
        const r = await getOk(blobUrl(server), big.size, server.label, undefined, headers(server));
        speeds.get(server)!.push(mibPerSecond(r.bytes, r.ms));
      }
    }
    const withAuth = median(speeds.get(on)!);
    const without = median(speeds.get(off)!);
    rows.push({
      measure: `Auth cost: warm ${sizeLabel(big.size)} blob GET with a token (limit = no auth)`,
      unit: "MiB/s",
      oci: withAuth,
      limit: without,
      runs: { oci: speeds.get(on)!, limit: speeds.get(off)! },
      target: ">= 0.95x no auth",
      met: withAuth >= 0.95 * without,
    });
  } finally {
    await Promise.all([on.stop(), off.stop()]);
    await scratch.cleanup();
  }
}

async function cold(fx: Fixture, plan: Plan) {
  const c = fx.cold!;
  const label = sizeLabel(c.size);
  progress(`cold: ${label} pull-through x${plan.coldReps}`);
  const path = `${c.repo}/blobs/${c.digest}`;
  const direct = `${fx.upstream.url}/v2/${path}`;
  await getOk(direct, c.size, "upstream"); // the upstream's file is in the page cache from now on
  // What forwarding alone costs here: nginx passing the same GET through, storing nothing.
  const forwarder = await startNginx({ proxyTo: fx.upstream.url });
  const forwarded = `${forwarder.url}/proxy/v2/${path}`;
  const times: Record<string, number[]> = { direct: [], oci: [], dist: [], forwarded: [] };
  const added: number[] = [];
  for (let rep = 0; rep < plan.coldReps; rep++) {
    for (const which of rotate(["direct", "oci", "dist", "forwarded"], rep)) {
      if (which === "direct" || which === "forwarded") {
        const url = which === "direct" ? direct : forwarded;
        times[which].push((await getOk(url, c.size, which)).ms);
        continue;
      }
      const server = which === "oci"
        ? await startMirror({ upstreamHost: fx.upstream.host })
        : await startDistributionProxy(fx.upstream.url);
      try {
        const sampler = new RssSampler(server.pids);
        times[which].push(
          (await getOk(`${server.url}${server.prefix}${path}`, c.size, server.label)).ms,
        );
        const peak = sampler.stop();
        if (which === "oci") added.push(peak - sampler.before);
      } finally {
        await server.stop();
      }
    }
  }
  await forwarder.stop();
  const oci = median(times.oci);
  const d = median(times.dist);
  const direct_ = median(times.direct);
  rows.push({
    measure: `Cold ${label} pull-through (limit: direct from upstream)`,
    unit: "s",
    oci: oci / 1000,
    dist: d / 1000,
    limit: direct_ / 1000,
    runs: {
      oci: times.oci.map((t) => t / 1000),
      dist: times.dist.map((t) => t / 1000),
      limit: times.direct.map((t) => t / 1000),
    },
    lowerIsBetter: true,
    target: "<= 1.2x direct",
    met: oci <= 1.2 * direct_,
  });
  rows.push({
    measure: `Cold ${label} pull-through (limit: nginx proxy_pass, no cache, no hashing)`,
    unit: "s",
    oci: oci / 1000,
    dist: d / 1000,
    limit: median(times.forwarded) / 1000,
    runs: { limit: times.forwarded.map((t) => t / 1000) },
    lowerIsBetter: true,
  });
  rows.push({
    measure: `RSS added during cold ${label} pull-through`,
    unit: "MB",
    oci: mb(median(added)),
    runs: { oci: added.map(mb) },
    lowerIsBetter: true,
    target: "adds < 32 MB",
    met: mb(median(added)) < 32,
  });
}

async function soakSection(fx: Fixture, plan: Plan) {
  const result = await soak(fx.upstream, {
    seconds: plan.soakSeconds,
    images: 20,
    layerSize: 4 * MiB,
    clients: 4,
  }, progress);
  rows.push(...result.rows);
  notes.push(...result.notes);
}

async function concurrent(fx: Fixture, plan: Plan) {
  const c = fx.concurrent!;
  const label = sizeLabel(c.size);
  const path = `${c.repo}/blobs/${c.digest}`;
  for (const clients of plan.concurrentClients) {
    progress(`concurrent: ${clients} cold clients of one ${label} blob x${plan.concurrentReps}`);
    const times: Record<string, number[]> = { oci: [], dist: [], direct: [] };
    const gets: Record<string, number[]> = { oci: [], dist: [] };
    for (let rep = 0; rep < plan.concurrentReps; rep++) {
      for (const which of rotate(["oci", "dist", "direct"], rep)) {
        const server = which === "oci"
          ? await startMirror({ upstreamHost: fx.upstream.host })
          : which === "dist"
          ? await startDistributionProxy(fx.upstream.url)
          : undefined;
        try {
          const url = server
            ? `${server.url}${server.prefix}${path}`
            : `${fx.upstream.url}/v2/${path}`;
          await fx.upstream.sync();
          fx.upstream.clearLog();
          const started = performance.now();
          const results = await Promise.allSettled(
            Array.from({ length: clients }, () => getOk(url, c.size, which, 256 << 10)),
          );
          times[which].push(performance.now() - started);
          const failed = results.filter((r) => r.status === "rejected");
          if (failed.length > 0) {
            notes.push(
              `${clients} concurrent via ${which}: ${failed.length} of ${clients} clients failed ` +
                `(${String((failed[0] as PromiseRejectedResult).reason?.message).split("\n")[0]}).`,
            );
          }
          if (which !== "direct") gets[which].push(await fx.upstream.countBlobGets(c.digest));
        } finally {
          await server?.stop();
        }
      }
    }
    const list = (xs: number[]) => xs.length > 1 ? ` (${xs.join(", ")})` : "";
    rows.push({
      measure: `${clients} concurrent cold pulls of one ${label} blob: upstream GETs`,
      unit: "GETs",
      oci: Math.max(...gets.oci),
      dist: Math.max(...gets.dist),
      text: {
        oci: `${Math.max(...gets.oci)}${list(gets.oci)}`,
        dist: `${Math.max(...gets.dist)}${list(gets.dist)}`,
      },
      lowerIsBetter: true,
      target: "exactly 1",
      met: gets.oci.every((n) => n === 1),
    });
    rows.push({
      measure: `${clients} concurrent cold pulls: total time (limit: direct from upstream)`,
      unit: "s",
      oci: median(times.oci) / 1000,
      dist: median(times.dist) / 1000,
      limit: median(times.direct) / 1000,
      runs: {
        oci: times.oci.map((t) => t / 1000),
        dist: times.dist.map((t) => t / 1000),
        limit: times.direct.map((t) => t / 1000),
      },
      lowerIsBetter: true,
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Main

function parseOptions(args: string[]) {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean", default: false },
      only: { type: "string", multiple: true },
      output: { type: "string", default: `${REPO_ROOT}/bench/results.md` },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(
      "usage: deno task bench [--quick] [--only SECTION[,SECTION]] [--output FILE]\n" +
        `sections: ${SECTIONS.join(", ")}, memory (= startup,blob,manifest); soak only by name`,
    );
    Deno.exit(0);
  }
  // The soak runs for minutes: only when asked for by name.
  let sections = new Set<Section>(SECTIONS.filter((s) => s !== "soak"));
  if (values.only?.length) {
    sections = new Set();
    for (const name of values.only.flatMap((v) => v.split(","))) {
      const expanded = ALIASES[name] ??
        (SECTIONS.includes(name as Section) ? [name as Section] : undefined);
      if (!expanded) {
        console.error(
          `bench: unknown section ${JSON.stringify(name)}; one of ${SECTIONS.join(", ")}, memory`,
        );
        Deno.exit(2);
      }
      for (const s of expanded) sections.add(s);
    }
    // S3 rows are compared with the filesystem blob row.
    if (sections.has("s3")) sections.add("blob");
  }
  return { plan: values.quick ? QUICK : FULL, sections, output: values.output };
}

async function describeRun(plan: Plan, sections: Set<Section>, startedAt: Date, load: string[]) {
  const git = async (...args: string[]) =>
    (await run("git", args, { cwd: REPO_ROOT, timeoutMs: 10_000 })).stdout.trim();
  const commit = await git("rev-parse", "--short", "HEAD");
  const dirty = (await git("status", "--porcelain", "--", "src")).split("\n").filter(Boolean);
  const cpu = (await Deno.readTextFile("/proc/cpuinfo").catch(() => ""))
    .match(/^model name\s*:\s*(.+)$/m)?.[1] ?? "unknown CPU";
  return [
    `Run ${startedAt.toISOString()} (${plan.quick ? "--quick" : "full"}; sections: ${
      [...sections].join(", ")
    }), ` +
    `commit ${commit}${dirty.length ? ` + ${dirty.length} uncommitted change(s) in src/` : ""}, ` +
    `Deno ${Deno.version.deno}, ${navigator.hardwareConcurrency} CPUs (${cpu}), ` +
    `download client: ${receiverName()}, mirror run as \`${
      mirrorCommand().slice(1).join(" ")
    }\`, ` +
    `load average ${load.join(" -> ")} (start -> end).`,
  ];
}

function loadAverage(): string {
  try {
    return Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
  } catch {
    return "?";
  }
}

async function main(): Promise<number> {
  const { plan, sections, output } = parseOptions(Deno.args);
  const startedAt = new Date();
  const loadAtStart = loadAverage();
  await ensureTools();
  const has = (s: Section) => sections.has(s);

  const held: { upstream?: Upstream } = {};
  let exitCode = 0;
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    cleaning ??= (async () => {
      await shutdown();
      await held.upstream?.close();
    })();
  let interrupted = false;
  const onSignal = () => {
    if (interrupted) return;
    interrupted = true;
    progress("interrupted: cleaning up");
    cleanup().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  progress("starting the upstream registry and pushing test content");
  const upstream = await startUpstream({ logLevel: "error" });
  held.upstream = upstream;
  if (interrupted) await upstream.close();
  const watchdog = setTimeout(() => {
    progress(`run limit of ${RUN_LIMIT_MS / 60_000} minutes reached: giving up`);
    cleanup().finally(() => Deno.exit(3));
  }, RUN_LIMIT_MS);
  Deno.unrefTimer(watchdog);

  try {
    const fx: Fixture = { upstream };
    if (has("blob") || has("s3") || has("guard") || has("push") || has("auth")) {
      const repo = "bench/big";
      const t = performance.now();
      const b = await pushRandomBlob(upstream, repo, plan.blobSize);
      progress(`pushed ${sizeLabel(plan.blobSize)} blob in ${fmt(performance.now() - t)} ms`);
      fx.big = { repo, digest: b.digest, size: b.size, file: upstreamBlobFile(upstream, b.digest) };
    }
    if (has("cold")) {
      const b = await pushRandomBlob(upstream, "bench/cold", plan.coldSize);
      fx.cold = { repo: "bench/cold", digest: b.digest, size: b.size };
    }
    if (has("concurrent")) {
      const b = await pushRandomBlob(upstream, "bench/concurrent", plan.concurrentSize);
      fx.concurrent = { repo: "bench/concurrent", digest: b.digest, size: b.size };
    }
    if (has("manifest") || has("guard")) {
      const image = buildImage({ layers: 1, layerSize: 1024 });
      await pushImage(upstream, "bench/app", "v1", image);
      fx.manifest = {
        repo: "bench/app",
        tag: "v1",
        digest: image.digest,
        bytes: image.manifest.bytes,
      };
    }

    const sectionsToRun: [Section, (fx: Fixture, plan: Plan) => Promise<void>][] = [
      ["startup", startup],
      ["blob", blob],
      ["s3", s3],
      ["manifest", manifest],
      ["cold", cold],
      ["concurrent", concurrent],
      ["guard", guard],
      ["push", push],
      ["auth", auth],
      ["soak", soakSection],
    ];
    for (const [name, fn] of sectionsToRun) {
      if (!has(name)) continue;
      if (interrupted) break;
      const t = performance.now();
      try {
        await fn(fx, plan);
      } catch (e) {
        exitCode = 1;
        notes.push(`Section ${name} failed: ${(e as Error).message.split("\n")[0]}`);
        progress(`section ${name} failed: ${(e as Error).stack ?? e}`);
        await stopAll();
      }
      progress(`${name} done in ${fmt((performance.now() - t) / 1000)} s`);
    }
  } finally {
    await cleanup();
    clearTimeout(watchdog);
  }
  if (interrupted) return 130;

  const header = await describeRun(plan, sections, startedAt, [loadAtStart, loadAverage()]);
  const text = [
    "# oci-registry benchmark",
    "",
    ...header,
    "",
    "Command: `deno task bench" + (plan.quick ? " --quick" : "") + "`. Peer: CNCF distribution " +
    "2.8.2 (Debian docker-registry) in proxy mode; limit: nginx 1.22 sendfile serving the same " +
    "files (or, for cold pulls, the client fetching straight from the upstream registry). Medians " +
    `of ${plan.blobReps} (blob), ${plan.manifestReps} x ${plan.manifestSeconds} s (manifest), ` +
    `${plan.coldReps} (cold), ${plan.concurrentReps} (concurrent), ${plan.startupReps} (start-up) runs.`,
    "",
    table(rows),
    "",
    ...runs(rows),
    ...(notes.length ? ["Notes:", "", ...notes.map((n) => `- ${n}`), ""] : []),
  ].join("\n");
  await Deno.writeTextFile(output, text);
  // The repository's `deno fmt --check` covers this file: store it formatted.
  await run(Deno.execPath(), ["fmt", "--quiet", output], { timeoutMs: 30_000 });
  console.log(await Deno.readTextFile(output));
  progress(`wrote ${output}`);
  return exitCode;
}

if (import.meta.main) {
  Deno.exit(await main());
}
