/**
 * The mirror under test as a subprocess:
 *
 *   DENO run -A src/main.ts --listen 127.0.0.1:PORT [--upstream-config-file FILE]
 *        [--default-namespace NS] [extraArgs...] filesystem --root DIR    (or `storageArgs`)
 *
 * It writes the upstream YAML for you, waits until `GET /` answers 200, captures the output,
 * and can stop (SIGTERM), kill (SIGKILL) and restart the process on the same port and root.
 *
 *   await using mirror = await startMirror({ upstreams: [{ namespace: "registry.test", host: up.host, tls: false }] });
 *   const r = await mirror.fetch("/v2/registry.test/library/x/manifests/1");
 */
import {
  ChildProcess,
  freePort,
  GiveUp,
  REPO_ROOT,
  type TempDir,
  tempDir,
  waitFor,
} from "./tools.ts";

/** One upstream entry of the YAML file (snake_case keys as the file spells them). */
export interface UpstreamEntry {
  namespace: string;
  host: string;
  tls?: boolean;
  accept_invalid_certs?: boolean;
  user_agent?: string;
  username?: string;
  password?: string;
  manifest_invalidation_time?: string;
  blob_invalidation_time?: string;
  [key: string]: unknown;
}

export interface MirrorOptions {
  /** Upstream entries written to a YAML file passed as --upstream-config-file. */
  upstreams?: UpstreamEntry[];
  /** Raw YAML text for the file instead (for malformed-config tests). */
  upstreamConfigYaml?: string;
  /** --default-namespace */
  defaultNamespace?: string;
  /** Storage subcommand and its flags; default `["filesystem", "--root", <temp dir>]`. */
  storageArgs?: string[];
  /** Filesystem root to use (kept on close); default a temp dir removed on close. */
  root?: string;
  /** More global flags, placed before the storage subcommand. */
  extraArgs?: string[];
  /** Extra environment (e.g. UPSTREAM_CREDENTIALS). */
  env?: Record<string, string>;
  /** Fixed port; default a free one. */
  port?: number;
  /**
   * The program to run, default `[Deno.execPath(), "run", "-A", "--v8-flags=--expose-gc,--max-semi-space-size=1", "src/main.ts"]` (as `deno task start`); for example
   * `[Deno.execPath(), "run", "-A", "dist/oci-registry.js"]` for the bundle.
   */
  command?: string[];
  /** How long to wait for `GET /` to answer 200. Default 30 s. */
  readyTimeoutMs?: number;
  /** Don't wait for readiness (for tests expecting the process to fail at start). */
  noWait?: boolean;
  /** Echo the mirror's output to stderr (also HARNESS_VERBOSE=1). */
  echo?: boolean;
}

export interface Mirror extends AsyncDisposable {
  port: number;
  /** `127.0.0.1:PORT` */
  host: string;
  /** `http://127.0.0.1:PORT` */
  url: string;
  /** The filesystem root (undefined when `storageArgs` were given). */
  root?: string;
  /** The upstream YAML file, if one was written. */
  configFile?: string;
  /** The full argument list used to start the process. */
  args: string[];
  /** Everything the process printed, stdout and stderr interleaved, across restarts. */
  logs(): string;
  clearLogs(): void;
  /** Waits until the output shows a line matching `pattern`. */
  waitForLog(pattern: RegExp, timeoutMs?: number): Promise<string>;
  running(): boolean;
  /** Exit status after the process has ended (e.g. a start that was expected to fail). */
  exitStatus(): Deno.CommandStatus | undefined;
  /** Waits for the process to end by itself and returns its status. */
  waitForExit(timeoutMs?: number): Promise<Deno.CommandStatus>;
  /** fetch() against the mirror; `path` like `/v2/...`. The caller consumes the body. */
  fetch(path: string, init?: RequestInit): Promise<Response>;
  /** SIGTERM, wait up to `graceMs` (default 10 s), then SIGKILL. Root and port are kept. */
  stop(graceMs?: number): Promise<Deno.CommandStatus | undefined>;
  /** SIGKILL. Root and port are kept. */
  kill(): Promise<Deno.CommandStatus | undefined>;
  /** Start again (same port, root, config); waits for readiness. */
  start(): Promise<void>;
  /** stop() then start(). */
  restart(): Promise<void>;
  /** stop() and remove the temp dirs the harness made. */
  close(): Promise<void>;
}

export async function startMirror(opts: MirrorOptions = {}): Promise<Mirror> {
  const dir = await tempDir("oci-mirror-");
  try {
    let root: string | undefined;
    let storageArgs = opts.storageArgs;
    if (!storageArgs) {
      root = opts.root ?? dir.join("root");
      await Deno.mkdir(root, { recursive: true });
      storageArgs = ["filesystem", "--root", root];
    }
    let configFile: string | undefined;
    if (opts.upstreamConfigYaml !== undefined || opts.upstreams) {
      configFile = dir.join("upstreams.yaml");
      await Deno.writeTextFile(
        configFile,
        opts.upstreamConfigYaml ?? upstreamYaml(opts.upstreams ?? []),
      );
    }
    const port = opts.port ?? freePort();
    const args = [`--listen`, `127.0.0.1:${port}`];
    if (configFile) args.push("--upstream-config-file", configFile);
    if (opts.defaultNamespace) args.push("--default-namespace", opts.defaultNamespace);
    args.push(...(opts.extraArgs ?? []), ...storageArgs);
    const mirror = new MirrorImpl(opts, dir, port, root, configFile, args);
    await mirror.start(opts.noWait);
    return mirror;
  } catch (e) {
    await dir.cleanup();
    throw e;
  }
}

/** Renders upstream entries as the YAML list the mirror reads (JSON scalars are valid YAML). */
export function upstreamYaml(entries: UpstreamEntry[]): string {
  if (entries.length === 0) return "[]\n";
  return entries.map((entry) =>
    Object.entries(entry)
      .filter(([, value]) => value !== undefined)
      .map(([key, value], i) => `${i === 0 ? "- " : "  "}${key}: ${JSON.stringify(value)}`)
      .join("\n")
  ).join("\n") + "\n";
}

class MirrorImpl implements Mirror {
  readonly port: number;
  readonly host: string;
  readonly url: string;
  readonly root?: string;
  readonly configFile?: string;
  readonly args: string[];
  readonly #opts: MirrorOptions;
  readonly #dir: TempDir;
  readonly #command: string[];
  #process: ChildProcess | undefined;
  #lines: string[] = [];
  #closed = false;

  constructor(
    opts: MirrorOptions,
    dir: TempDir,
    port: number,
    root: string | undefined,
    configFile: string | undefined,
    args: string[],
  ) {
    this.#opts = opts;
    this.#dir = dir;
    this.port = port;
    this.host = `127.0.0.1:${port}`;
    this.url = `http://127.0.0.1:${port}`;
    this.root = root;
    this.configFile = configFile;
    this.#command = opts.command ??
      [
        Deno.execPath(),
        "run",
        "-A",
        "--v8-flags=--expose-gc,--max-semi-space-size=1",
        "src/main.ts",
      ];
    this.args = [...this.#command.slice(1), ...args];
  }

  logs(): string {
    return this.#lines.join("\n");
  }

  clearLogs(): void {
    this.#lines = [];
  }

  async waitForLog(pattern: RegExp, timeoutMs = 10_000): Promise<string> {
    return await waitFor(() => this.#lines.find((line) => pattern.test(line)), {
      timeoutMs,
      intervalMs: 20,
      message: `mirror to print ${pattern}`,
    });
  }

  running(): boolean {
    return this.#process !== undefined && !this.#process.exited;
  }

  exitStatus(): Deno.CommandStatus | undefined {
    return this.#process?.status;
  }

  async waitForExit(timeoutMs = 30_000): Promise<Deno.CommandStatus> {
    const child = this.#process;
    if (!child) throw new Error("mirror was never started");
    await waitFor(() => child.exited, { timeoutMs, message: "mirror to exit" });
    return child.status!;
  }

  fetch(path: string, init?: RequestInit): Promise<Response> {
    return fetch(new URL(path, this.url), init);
  }

  async start(noWait = false): Promise<void> {
    if (this.#closed) throw new Error("mirror: start() after close()");
    if (this.running()) return;
    const child = new ChildProcess(this.#command[0], this.args, {
      cwd: REPO_ROOT,
      env: { NO_COLOR: "1", ...this.#opts.env },
      name: `mirror:${this.port}`,
      echo: this.#opts.echo,
    });
    this.#process = child;
    child.onLine(({ line }) => this.#lines.push(line));
    for (const { line } of child.lines()) this.#lines.push(line);
    if (noWait) return;
    try {
      await waitFor(async () => {
        if (child.exited) {
          throw new GiveUp(`mirror exited with code ${child.status?.code} before it was ready`);
        }
        const response = await fetch(this.url + "/");
        await response.body?.cancel();
        return response.status === 200;
      }, {
        timeoutMs: this.#opts.readyTimeoutMs ?? 30_000,
        intervalMs: 50,
        message: `the mirror to answer GET / with 200 on ${this.host}`,
      });
    } catch (e) {
      await child.kill();
      throw new Error(
        `${(e as Error).message}\ncommand: ${this.#command[0]} ${this.args.join(" ")}\n` +
          `--- mirror output\n${child.output()}`,
      );
    }
  }

  async stop(graceMs = 10_000): Promise<Deno.CommandStatus | undefined> {
    return await this.#process?.stop("SIGTERM", graceMs);
  }

  async kill(): Promise<Deno.CommandStatus | undefined> {
    return await this.#process?.kill();
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.stop();
    await this.#dir.cleanup();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
