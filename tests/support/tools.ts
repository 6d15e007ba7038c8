/**
 * Small helpers every end-to-end test uses: run a command with a timeout, hash files, temp dirs
 * that are always removed, free ports, polling, and a long-running child process whose output is
 * captured line by line.
 *
 * Nothing here imports from src/: the harness must not depend on the code it tests.
 */
import { createHash } from "node:crypto";

/** Absolute path of the repository root (tests/support/ is two levels below it). */
export const REPO_ROOT: string = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

export interface RunOptions {
  /** Kill the command (SIGKILL) after this many milliseconds. Default 120 s. */
  timeoutMs?: number;
  env?: Record<string, string>;
  cwd?: string;
  /** Written to the command's standard input, which is then closed. */
  stdin?: string | Uint8Array;
  /** Throw (with the command's output) when it exits non-zero. Default false. */
  check?: boolean;
}

export interface RunResult {
  code: number;
  success: boolean;
  stdout: string;
  stderr: string;
  /** True when the command was killed because it ran past `timeoutMs`. */
  timedOut: boolean;
}

/** Runs a command to completion and returns its exit code and output. */
export async function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const child = new Deno.Command(cmd, {
    args,
    env: opts.env,
    cwd: opts.cwd,
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch { /* already gone */ }
  }, opts.timeoutMs ?? 120_000);
  try {
    if (opts.stdin !== undefined) {
      const writer = child.stdin.getWriter();
      try {
        await writer.write(
          typeof opts.stdin === "string" ? new TextEncoder().encode(opts.stdin) : opts.stdin,
        );
      } finally {
        await writer.close().catch(() => {});
      }
    }
    const output = await child.output();
    const result: RunResult = {
      code: output.code,
      success: output.success && !timedOut,
      stdout: new TextDecoder().decode(output.stdout),
      stderr: new TextDecoder().decode(output.stderr),
      timedOut,
    };
    if (opts.check && !result.success) {
      throw new Error(
        `${cmd} ${args.join(" ")} ${
          timedOut ? `timed out after ${opts.timeoutMs ?? 120_000} ms` : `exited ${result.code}`
        }\n--- stdout\n${result.stdout}\n--- stderr\n${result.stderr}`,
      );
    }
    return result;
  } finally {
    clearTimeout(timer);
  }
}

/** True when `name` is an executable found on PATH (or an absolute path that exists). */
export function which(name: string): string | undefined {
  const candidates = name.includes("/")
    ? [name]
    : (Deno.env.get("PATH") ?? "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
      .split(":")
      .concat(["/usr/sbin", "/sbin"])
      .map((dir) => `${dir}/${name}`);
  for (const candidate of candidates) {
    try {
      const info = Deno.statSync(candidate);
      if (info.isFile && info.mode !== null && (info.mode & 0o111) !== 0) return candidate;
    } catch { /* not there */ }
  }
  return undefined;
}

/** `sha256:` digest of bytes or text. */
export function sha256Digest(data: Uint8Array | string): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

/** Hex sha256 of a file, streamed. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  using file = await Deno.open(path, { read: true });
  for await (const chunk of file.readable.values({ preventCancel: true })) hash.update(chunk);
  return hash.digest("hex");
}

// ---------------------------------------------------------------------------------------------
// Temporary directories

const liveTempDirs = new Set<string>();
let unloadHookInstalled = false;

function installUnloadHook() {
  if (unloadHookInstalled) return;
  unloadHookInstalled = true;
  // Safety net: a test that fails before its cleanup still leaves nothing behind.
  globalThis.addEventListener("unload", () => {
    for (const path of liveTempDirs) {
      try {
        Deno.removeSync(path, { recursive: true });
      } catch { /* best effort */ }
    }
  });
}

export interface TempDir extends AsyncDisposable {
  path: string;
  /** `path` joined with the given segments. */
  join(...segments: string[]): string;
  /** Removes the directory and everything in it; safe to call twice. */
  cleanup(): Promise<void>;
}

/**
 * Creates a temporary directory. It is removed by `cleanup()`, by `await using`, or at the
 * latest when the test process exits.
 */
export async function tempDir(prefix = "oci-registry-test-"): Promise<TempDir> {
  installUnloadHook();
  const path = await Deno.makeTempDir({ prefix });
  liveTempDirs.add(path);
  const cleanup = async () => {
    if (!liveTempDirs.delete(path)) return;
    await Deno.remove(path, { recursive: true }).catch(() => {});
  };
  return {
    path,
    join: (...segments) => [path, ...segments].join("/"),
    cleanup,
    [Symbol.asyncDispose]: cleanup,
  };
}

// ---------------------------------------------------------------------------------------------
// Ports and polling

const handedOutPorts = new Set<number>();

/**
 * A TCP port on 127.0.0.1 that was free a moment ago. Never hands out the same port twice in one
 * process, so two servers started back to back cannot be given the same one.
 */
export function freePort(): number {
  for (let attempt = 0; attempt < 50; attempt++) {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    listener.close();
    if (!handedOutPorts.has(port)) {
      handedOutPorts.add(port);
      return port;
    }
  }
  throw new Error("freePort: could not find an unused port");
}

/** True when `path` exists (file, directory or anything else). */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

/** True when something accepts TCP connections on 127.0.0.1:port. */
export async function isListening(port: number, hostname = "127.0.0.1"): Promise<boolean> {
  try {
    const conn = await Deno.connect({ hostname, port });
    conn.close();
    return true;
  } catch {
    return false;
  }
}

export interface WaitForOptions {
  timeoutMs?: number;
  intervalMs?: number;
  /** Said in the error when the time runs out. */
  message?: string;
}

/** Thrown from a `waitFor` callback to stop waiting at once (e.g. the process died). */
export class GiveUp extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GiveUp";
  }
}

/**
 * Calls `fn` until it returns a truthy value (which is returned) or the time runs out. An
 * exception thrown by `fn` counts as "not yet" and is reported if the time runs out, except
 * `GiveUp`, which is rethrown at once.
 */
export async function waitFor<T>(
  fn: () => T | Promise<T>,
  opts: WaitForOptions | number = {},
): Promise<NonNullable<T>> {
  const { timeoutMs = 10_000, intervalMs = 50, message } = typeof opts === "number"
    ? { timeoutMs: opts }
    : opts;
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (true) {
    try {
      const value = await fn();
      if (value) return value as NonNullable<T>;
    } catch (e) {
      if (e instanceof GiveUp) throw e;
      lastError = e;
    }
    if (Date.now() >= deadline) {
      const why = lastError ? `; last error: ${(lastError as Error)?.message ?? lastError}` : "";
      throw new Error(`waitFor: ${message ?? "condition"} not met within ${timeoutMs} ms${why}`);
    }
    await delay(intervalMs);
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------------------------------------
// Long-running child processes

export interface ChildOptions {
  env?: Record<string, string>;
  cwd?: string;
  /** Prefix for echoed lines (see `echo`). */
  name?: string;
  /** Echo every output line to stderr as it arrives (also on when HARNESS_VERBOSE=1). */
  echo?: boolean;
}

/** One line a child printed, with the stream it came from. */
export interface OutputLine {
  stream: "stdout" | "stderr";
  line: string;
}

/**
 * A background process whose stdout and stderr are read continuously (so it never blocks on a
 * full pipe) and kept as lines. `stop()` always awaits the process' status and the readers, so
 * Deno's test sanitizers stay quiet.
 */
export class ChildProcess {
  readonly cmd: string;
  readonly args: string[];
  readonly #process: Deno.ChildProcess;
  readonly #lines: OutputLine[] = [];
  readonly #listeners = new Set<(line: OutputLine) => void>();
  readonly #done: Promise<Deno.CommandStatus>;
  readonly #echo: boolean;
  readonly #name: string;
  #status: Deno.CommandStatus | undefined;

  constructor(cmd: string, args: string[], opts: ChildOptions = {}) {
    this.cmd = cmd;
    this.args = args;
    this.#name = opts.name ?? cmd.split("/").pop()!;
    this.#echo = opts.echo ?? Deno.env.get("HARNESS_VERBOSE") === "1";
    this.#process = new Deno.Command(cmd, {
      args,
      env: opts.env,
      cwd: opts.cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const pumps = [
      this.#pump(this.#process.stdout, "stdout"),
      this.#pump(this.#process.stderr, "stderr"),
    ];
    this.#done = Promise.all([this.#process.status, ...pumps]).then(([status]) => {
      this.#status = status;
      return status;
    });
  }

  get pid(): number {
    return this.#process.pid;
  }

  /** The exit status once the process has exited (and its output was read), else undefined. */
  get status(): Deno.CommandStatus | undefined {
    return this.#status;
  }

  get exited(): boolean {
    return this.#status !== undefined;
  }

  /** Resolves with the exit status after the process exited and all its output was read. */
  get done(): Promise<Deno.CommandStatus> {
    return this.#done;
  }

  lines(): OutputLine[] {
    return [...this.#lines];
  }

  /** All output so far (stdout and stderr interleaved in arrival order). */
  output(): string {
    return this.#lines.map((l) => l.line).join("\n");
  }

  /** Forgets the output captured so far. */
  clearOutput(): void {
    this.#lines.length = 0;
  }

  /** Calls `fn` for every line printed from now on; returns a function that unsubscribes. */
  onLine(fn: (line: OutputLine) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  /** Waits until a line (already printed or to come) matches `pattern`. */
  async waitForLine(pattern: RegExp, timeoutMs = 10_000): Promise<string> {
    return await waitFor(
      () => {
        if (this.exited) {
          const found = this.#lines.find((l) => pattern.test(l.line));
          if (found) return found.line;
          throw new Error(
            `${this.#name} exited (${this.#status?.code}) before printing ${pattern}`,
          );
        }
        return this.#lines.find((l) => pattern.test(l.line))?.line;
      },
      { timeoutMs, intervalMs: 20, message: `${this.#name} to print ${pattern}` },
    );
  }

  signal(signal: Deno.Signal): void {
    if (this.exited) return;
    try {
      this.#process.kill(signal);
    } catch { /* already exited */ }
  }

  /**
   * Sends `signal` (default SIGTERM), waits up to `graceMs` for the exit, then SIGKILLs.
   * Resolves with the exit status.
   */
  async stop(signal: Deno.Signal = "SIGTERM", graceMs = 5_000): Promise<Deno.CommandStatus> {
    if (this.#status) return this.#status;
    this.signal(signal);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), graceMs);
    });
    try {
      const first = await Promise.race([this.#done, timedOut]);
      if (first !== "timeout") return first;
    } finally {
      clearTimeout(timer);
    }
    this.signal("SIGKILL");
    return await this.#done;
  }

  /** SIGKILL and wait. */
  async kill(): Promise<Deno.CommandStatus> {
    return await this.stop("SIGKILL", 60_000);
  }

  async #pump(stream: ReadableStream<Uint8Array>, name: "stdout" | "stderr"): Promise<void> {
    let partial = "";
    const emit = (text: string) => {
      const line: OutputLine = { stream: name, line: text };
      this.#lines.push(line);
      if (this.#echo) console.error(`[${this.#name} ${this.pid}] ${text}`);
      for (const listener of this.#listeners) {
        try {
          listener(line);
        } catch { /* a listener's problem is not the pump's */ }
      }
    };
    try {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        partial += chunk;
        let newline: number;
        while ((newline = partial.indexOf("\n")) >= 0) {
          emit(partial.slice(0, newline).replace(/\r$/, ""));
          partial = partial.slice(newline + 1);
        }
      }
    } catch { /* stream closed under us */ }
    if (partial) emit(partial);
  }
}

/** Closes a connection that may be closed already (by its peer, or by an earlier close). */
export function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* already closed */ }
}
