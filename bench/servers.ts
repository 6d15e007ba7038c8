/**
 * The servers a benchmark compares, as subprocesses on 127.0.0.1:
 *
 * - oci-registry (`deno run -A src/main.ts ...`), filesystem or S3;
 * - CNCF distribution 2.8.2 (Debian `docker-registry`) in proxy mode, the peer;
 * - nginx with sendfile serving the same bytes as static files, the limit.
 *
 * Their output goes straight to a log file (`sh -c 'exec ... >LOG'`), so a server logging one
 * line per request never waits on a pipe and the bench spends no CPU reading it. Memory is read
 * from /proc/PID/status of the real server process: the PID is resolved through wrappers (a
 * shell, npx) to the process whose executable is the server itself.
 */
import { httpGet } from "./http.ts";
import { upstreamYaml } from "../tests/support/mirror.ts";
import { registryStorageAndHttp } from "../tests/support/upstream.ts";
import { delay, freePort, REPO_ROOT, type TempDir, tempDir } from "../tests/support/tools.ts";

export const REGISTRY_BINARY = "/usr/bin/docker-registry";
export const NGINX_BINARY = "/usr/sbin/nginx";

/** The namespace the mirror maps to the bench's upstream registry. */
export const NAMESPACE = "registry.test";

export interface Server {
  /** "oci-registry", "distribution", "nginx" */
  kind: string;
  /** Short label for errors and logs. */
  label: string;
  port: number;
  /** `http://127.0.0.1:PORT` */
  url: string;
  /** Path prefix before a repository name (`/v2/registry.test/` for the mirror). */
  prefix: string;
  /** Real server process ids (nginx: master and workers). */
  pids: number[];
  /** From spawning to the first answered `GET /v2/`, ms. */
  startupMs: number;
  /** The process' output so far. */
  log(): Promise<string>;
  /** SIGTERM, then SIGKILL after a grace period; removes the server's temp dir. */
  stop(): Promise<void>;
}

const live = new Set<Server>();
let stopping = false;
const cleanups = new Set<() => Promise<void>>();

/** Registers something else to stop in `stopAll` (s3rver); returns a function that forgets it. */
export function onStopAll(fn: () => Promise<void>): () => void {
  if (stopping) {
    fn().catch(() => {});
    throw new Error("the bench is shutting down");
  }
  cleanups.add(fn);
  return () => cleanups.delete(fn);
}

/** Stops everything and refuses to start anything from now on (Ctrl-C). */
export async function shutdown(): Promise<void> {
  stopping = true;
  await stopAll();
}

/** Throws once `shutdown` was called: nothing new may start. */
export function checkNotStopping(): void {
  if (stopping) throw new Error("the bench is shutting down");
}

/** Stops every server still running (for cleanup on errors and Ctrl-C). */
export async function stopAll(): Promise<void> {
  await Promise.all([
    ...[...live].map((s) => s.stop().catch(() => {})),
    ...[...cleanups].map((fn) => fn().catch(() => {})),
  ]);
  cleanups.clear();
}

interface SpawnOptions {
  kind: string;
  label: string;
  port: number;
  prefix: string;
  dir: TempDir;
  cmd: string;
  args: string[];
  cwd?: string;
  env?: Record<string, string>;
  /** Executable names of the real server process (basename of /proc/PID/exe). */
  exeNames: string[];
  /** Include child processes with these executables too (nginx workers). */
  withChildren?: boolean;
  readyTimeoutMs?: number;
}

async function spawnServer(opts: SpawnOptions): Promise<Server> {
  if (stopping) {
    await opts.dir.cleanup();
    checkNotStopping();
  }
  const logFile = opts.dir.join("server.log");
  const started = performance.now();
  const child = new Deno.Command("/bin/sh", {
    args: ["-c", 'exec "$@" >>"$BENCH_LOG" 2>&1', "sh", opts.cmd, ...opts.args],
    cwd: opts.cwd,
    env: { ...opts.env, BENCH_LOG: logFile, NO_COLOR: "1" },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const url = `http://127.0.0.1:${opts.port}`;
  const log = () => Deno.readTextFile(logFile).catch(() => "");
  let stopped = false;
  const server: Server = {
    kind: opts.kind,
    label: opts.label,
    port: opts.port,
    url,
    prefix: opts.prefix,
    pids: [child.pid],
    startupMs: 0,
    log,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      live.delete(server);
      const signal = (pid: number, sig: Deno.Signal) => {
        try {
          Deno.kill(pid, sig);
        } catch { /* gone */ }
      };
      signal(child.pid, "SIGTERM");
      const timer = delay(5_000).then(() => "timeout");
      if (await Promise.race([status, timer]) === "timeout") {
        for (const pid of [child.pid, ...server.pids]) signal(pid, "SIGKILL");
        await status;
      }
      // nginx workers leave with their master; make sure of it.
      for (const pid of server.pids) {
        if (pid !== child.pid && processExists(pid)) signal(pid, "SIGKILL");
      }
      await opts.dir.cleanup();
    },
  };
  live.add(server);
  try {
    const deadline = started + (opts.readyTimeoutMs ?? 30_000);
    while (true) {
      if (exited) throw new Error(`${opts.label} exited before it was ready`);
      try {
        const r = await httpGet(`${url}/v2/`, { timeoutMs: 2_000, bufferSize: 64 << 10 });
        // 401: a registry with authentication on answers the ping with its challenge.
        if (r.status === 200 || r.status === 401) break;
      } catch { /* not listening yet */ }
      if (performance.now() > deadline) throw new Error(`${opts.label} not ready in time`);
      await delay(5);
    }
    server.startupMs = performance.now() - started;
    server.pids = resolvePids(child.pid, opts.exeNames, opts.withChildren ?? false);
  } catch (e) {
    await server.stop();
    throw new Error(`${(e as Error).message}\n--- ${opts.label} output\n${await log()}`);
  }
  return server;
}

// ---------------------------------------------------------------------------------------------
// The three kinds of server

export interface MirrorOptions {
  /** Upstream registry `127.0.0.1:PORT`, served as namespace registry.test. */
  upstreamHost: string;
  /**
   * Storage subcommand and flags, given the mirror's temp dir (removed on stop; put spool dirs
   * there); default filesystem in that dir.
   */
  storageArgs?: (dir: TempDir) => string[];
  /** Program to run; default `mirrorCommand()`. */
  command?: string[];
  /** More global flags, before the storage subcommand. */
  extraArgs?: string[];
  label?: string;
}

export interface MirrorServer extends Server {
  /** Filesystem root (filesystem storage only). */
  root?: string;
}

export async function startMirror(opts: MirrorOptions): Promise<MirrorServer> {
  const dir = await tempDir("oci-bench-mirror-");
  const port = freePort();
  const configFile = dir.join("upstreams.yaml");
  await Deno.writeTextFile(
    configFile,
    upstreamYaml([{ namespace: NAMESPACE, host: opts.upstreamHost, tls: false }]),
  );
  let root: string | undefined;
  let storageArgs = opts.storageArgs?.(dir);
  if (!storageArgs) {
    root = dir.join("root");
    await Deno.mkdir(root);
    storageArgs = ["filesystem", "--root", root];
  }
  const command = opts.command ?? mirrorCommand();
  const server = await spawnServer({
    kind: "oci-registry",
    label: opts.label ?? "oci-registry",
    port,
    prefix: `/v2/${NAMESPACE}/`,
    dir,
    cmd: command[0],
    args: [
      ...command.slice(1),
      "--listen",
      `127.0.0.1:${port}`,
      "--upstream-config-file",
      configFile,
      ...(opts.extraArgs ?? []),
      ...storageArgs,
    ],
    cwd: REPO_ROOT,
    exeNames: [basename(command[0]), "deno"],
  });
  return Object.assign(server, { root });
}

let startFlags: string[] | undefined;

/**
 * How the mirror runs in production: `deno run` with the Deno flags of deno.json's `start` task
 * (V8 flags such as --expose-gc, permissions), else `-A`; always from the repository root.
 */
export function mirrorCommand(): string[] {
  if (startFlags === undefined) {
    startFlags = ["-A"];
    try {
      const config = JSON.parse(Deno.readTextFileSync(`${REPO_ROOT}/deno.json`));
      const start: string = config.tasks?.start ?? "";
      const match = /\bdeno run (.*?)\s*src\/main\.ts\b/.exec(start);
      if (match) {
        // Flags only (`--x` / `--x=y`); nothing of the storage arguments after main.ts.
        const flags = match[1].split(/\s+/).filter((f) => f.startsWith("-"));
        if (flags.length) startFlags = flags;
      }
    } catch { /* no readable deno.json: -A */ }
  }
  return [Deno.execPath(), "run", ...startFlags, "src/main.ts"];
}

/** distribution 2.8.2 as a pull-through cache of `remote`, filesystem storage in a temp dir. */
export async function startDistributionProxy(remote: string): Promise<Server> {
  const dir = await tempDir("oci-bench-distribution-");
  const port = freePort();
  await Deno.mkdir(dir.join("data"));
  const config = [
    "version: 0.1",
    "log:",
    "  level: warn",
    "  formatter: text",
    ...registryStorageAndHttp(dir.join("data"), port),
    "proxy:",
    `  remoteurl: ${JSON.stringify(remote)}`,
  ].join("\n") + "\n";
  await Deno.writeTextFile(dir.join("config.yml"), config);
  return await spawnServer({
    kind: "distribution",
    label: "distribution proxy",
    port,
    prefix: "/v2/",
    dir,
    cmd: REGISTRY_BINARY,
    args: ["serve", dir.join("config.yml")],
    exeNames: ["docker-registry", "registry"],
  });
}

export interface NginxServer extends Server {
  /** Where `/v2/<repo>/blobs/<digest>` and `/v2/<repo>/manifests/<ref>` are read from. */
  blobsDir: string;
  manifestsDir: string;
}

/**
 * nginx with sendfile serving `/v2/<repo>/blobs/<digest>` from `blobs/<digest>` and
 * `/v2/<repo>/manifests/<ref>` from `manifests/<ref>` in its temp dir (add files with
 * `addBlob` / `addManifest`). `worker_processes auto`, access log on, like a production setup.
 * With `proxyTo` (`http://host:port`), `/proxy/...` is also passed through to that server as a
 * plain forwarding proxy: no cache, no temp files, nothing checked.
 */
export async function startNginx(opts: { proxyTo?: string } = {}): Promise<NginxServer> {
  const dir = await tempDir("oci-bench-nginx-");
  const port = freePort();
  const blobsDir = dir.join("www", "blobs");
  const manifestsDir = dir.join("www", "manifests");
  await Deno.mkdir(blobsDir, { recursive: true });
  await Deno.mkdir(manifestsDir, { recursive: true });
  const isRoot = Deno.uid() === 0;
  const temp = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
    .map((name) => `  ${name}_temp_path ${dir.join(`${name}_temp`)};`);
  const config = [
    "daemon off;",
    "master_process on;",
    "worker_processes auto;",
    // Temp dirs are 0700: the workers must run as the same user to read them.
    ...(isRoot ? ["user root;"] : []),
    `pid ${dir.join("nginx.pid")};`,
    `error_log ${dir.join("error.log")} warn;`,
    "events { worker_connections 4096; }",
    "http {",
    `  access_log ${dir.join("access.log")};`,
    "  sendfile on;",
    "  tcp_nopush on;",
    "  keepalive_requests 10000000;",
    "  types { }",
    "  default_type application/octet-stream;",
    ...temp,
    "  server {",
    `    listen 127.0.0.1:${port};`,
    `    location = /v2/ { default_type application/json; return 200 "{}"; }`,
    `    location ~ ^/v2/.+/blobs/([a-z0-9]+:[a-f0-9]+)$ { alias ${blobsDir}/$1; }`,
    "    location ~ ^/v2/.+/manifests/([^/]+)$ {",
    `      alias ${manifestsDir}/$1;`,
    "      default_type application/vnd.oci.image.manifest.v1+json;",
    "    }",
    ...(opts.proxyTo
      ? [
        "    location /proxy/ {",
        `      proxy_pass ${opts.proxyTo}/;`,
        "      proxy_http_version 1.1;",
        "      proxy_max_temp_file_size 0;",
        "    }",
      ]
      : []),
    "  }",
    "}",
  ].join("\n") + "\n";
  await Deno.writeTextFile(dir.join("nginx.conf"), config);
  const server = await spawnServer({
    kind: "nginx",
    label: "nginx",
    port,
    prefix: "/v2/",
    dir,
    cmd: NGINX_BINARY,
    args: ["-c", dir.join("nginx.conf"), "-p", dir.path, "-e", dir.join("error.log")],
    exeNames: ["nginx"],
    withChildren: true,
  });
  // Workers may appear a moment after the master answers; pick them up.
  for (let i = 0; i < 40 && server.pids.length < 2; i++) {
    await delay(25);
    server.pids = resolvePids(server.pids[0], ["nginx"], true);
  }
  return Object.assign(server, { blobsDir, manifestsDir });
}

/** Makes `file` (hard link: same inode, same page cache) available as blob `digest`. */
export async function addBlob(nginx: NginxServer, digest: string, file: string): Promise<void> {
  await Deno.link(file, `${nginx.blobsDir}/${digest}`);
}

export async function addManifest(
  nginx: NginxServer,
  reference: string,
  bytes: Uint8Array,
): Promise<void> {
  await Deno.writeFile(`${nginx.manifestsDir}/${reference}`, bytes);
}

// ---------------------------------------------------------------------------------------------
// Processes and memory

function basename(path: string): string {
  return path.split("/").pop()!;
}

function processExists(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

function exeOf(pid: number): string | undefined {
  try {
    return basename(Deno.readLinkSync(`/proc/${pid}/exe`));
  } catch {
    return undefined;
  }
}

function childrenOf(pid: number): number[] {
  const children: number[] = [];
  try {
    for (const task of Deno.readDirSync(`/proc/${pid}/task`)) {
      const text = Deno.readTextFileSync(`/proc/${pid}/task/${task.name}/children`).trim();
      if (text) children.push(...text.split(/\s+/).map(Number));
    }
  } catch { /* gone */ }
  return children;
}

/**
 * The real server process under `pid`: `pid` itself when its executable is one of `exeNames`,
 * else the first such descendant (through sh or npx wrappers). With `withChildren`, its
 * children with the same executable too (nginx workers).
 */
export function resolvePids(pid: number, exeNames: string[], withChildren: boolean): number[] {
  const queue = [pid];
  let found: number | undefined;
  while (queue.length > 0) {
    const next = queue.shift()!;
    const exe = exeOf(next);
    if (exe && exeNames.includes(exe)) {
      found = next;
      break;
    }
    queue.push(...childrenOf(next));
  }
  if (found === undefined) return [pid];
  if (!withChildren) return [found];
  const names = exeNames;
  return [found, ...childrenOf(found).filter((c) => names.includes(exeOf(c) ?? ""))];
}

export interface MemoryInfo {
  /** Resident set size now, bytes (summed over the pids). */
  rss: number;
  /** Peak resident set size since the process started (VmHWM), bytes (summed). */
  hwm: number;
}

export function readMemory(pids: number[]): MemoryInfo {
  let rss = 0;
  let hwm = 0;
  for (const pid of pids) {
    let text: string;
    try {
      text = Deno.readTextFileSync(`/proc/${pid}/status`);
    } catch {
      continue;
    }
    rss += kb(text, "VmRSS");
    hwm += kb(text, "VmHWM");
  }
  return { rss, hwm };
}

function kb(status: string, field: string): number {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status);
  return match ? Number(match[1]) * 1024 : 0;
}

/** Samples VmRSS every `intervalMs` until stopped; returns the peak seen (bytes). */
export class RssSampler {
  readonly #pids: number[];
  readonly #timer: ReturnType<typeof setInterval>;
  peak = 0;
  before: number;

  constructor(pids: number[], intervalMs = 10) {
    this.#pids = pids;
    this.before = readMemory(pids).rss;
    this.peak = this.before;
    this.#timer = setInterval(() => this.sample(), intervalMs);
  }

  sample(): void {
    const { rss } = readMemory(this.#pids);
    if (rss > this.peak) this.peak = rss;
  }

  /** Stops sampling; returns the peak RSS (bytes) including one last sample. */
  stop(): number {
    clearInterval(this.#timer);
    this.sample();
    return this.peak;
  }
}
