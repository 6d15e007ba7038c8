/**
 * The process log: one line per message (and one per request, the access log), as text or as
 * JSON objects (`--log-format json`, for log shippers), filtered by `--log-level`.
 *
 * Lines are written to stdout in the background: console.log blocks the event loop until a
 * slow log reader (a container runtime's pipe, a full terminal) takes the line, which at
 * thousands of requests a second throttled the whole server. Lines are batched instead and
 * written asynchronously; if the reader falls more than MAX_PENDING bytes behind, further lines
 * are dropped and counted, and the count is logged once it catches up.
 *
 * Nothing here redacts: callers never pass credentials (the upstream client strips its secrets
 * from what upstreams answer, the server logs no header).
 */

const MAX_PENDING = 1 << 20;
const encoder = new TextEncoder();

export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
export type LogLevel = typeof LOG_LEVELS[number];
export const LOG_FORMATS = ["text", "json"] as const;
export type LogFormat = typeof LOG_FORMATS[number];

/** One request as the access log records it. */
export interface AccessEntry {
  method: string;
  /** Path and query as the client sent them (cut when very long). */
  target: string;
  status: number;
  /** Content-Length of the response, when it has one. */
  bytes: number | null;
  durationMs: number;
  /** The resolved namespace (registry), when the request named a repository. */
  namespace?: string;
  /** What the cache did: hit, miss, stale, revalidated, uncached. */
  cache?: string;
  /** Who asked, once authentication knows. */
  user?: string;
}

/** Writes a message at a level (default info); what every module is handed as `log`. */
export type LogFn = (message: string, level?: LogLevel) => void;

export interface Log extends LogFn {
  /** Writes one access-log line (at level info). */
  access(entry: AccessEntry): void;
  /** Resolves when every line logged so far is written. */
  flush(): Promise<void>;
  /** The latest warnings and errors, oldest first (for the status page), whatever the level. */
  recent(): LoggedEvent[];
}

export interface LoggedEvent {
  time: Date;
  level: LogLevel;
  message: string;
}

/** Warnings and errors the status page lists. */
const RECENT_EVENTS = 20;

export interface LogOptions {
  format?: LogFormat;
  level?: LogLevel;
  write?: (bytes: Uint8Array) => Promise<number>;
  now?: () => Date;
}

export function createLog(options: LogOptions = {}): Log {
  const write = options.write ?? ((bytes) => Deno.stdout.write(bytes));
  const json = options.format === "json";
  const threshold = LOG_LEVELS.indexOf(options.level ?? "info");
  const now = options.now ?? (() => new Date());
  let pending: string[] = [];
  let pendingBytes = 0;
  let dropped = 0;
  let writing: Promise<void> | undefined;

  const drain = async () => {
    while (pending.length > 0) {
      const text = pending.join("");
      pending = [];
      pendingBytes = 0;
      const bytes = encoder.encode(text);
      let offset = 0;
      try {
        while (offset < bytes.byteLength) offset += await write(bytes.subarray(offset));
      } catch {
        return; // stdout closed: nothing more can be said
      }
      if (dropped > 0) {
        const message = `log: ${dropped} lines dropped (log reader too slow)`;
        pending.push(json ? jsonLine(now(), "warn", { msg: message }) : `${message}\n`);
        dropped = 0;
      }
    }
  };

  const emit = (line: string) => {
    if (pendingBytes > MAX_PENDING) {
      dropped++;
      return;
    }
    pending.push(line);
    pendingBytes += line.length;
    writing ??= Promise.resolve().then(drain).finally(() => writing = undefined);
  };

  const recent: LoggedEvent[] = [];
  const log: LogFn = (message, level = "info") => {
    if (level === "warn" || level === "error") {
      recent.push({ time: now(), level, message: message.slice(0, 2000) });
      if (recent.length > RECENT_EVENTS) recent.shift();
    }
    if (LOG_LEVELS.indexOf(level) < threshold) return;
    if (json) emit(jsonLine(now(), level, { msg: message }));
    else emit(message.endsWith("\n") ? message : `${message}\n`);
  };
  return Object.assign(log, {
    access(entry: AccessEntry) {
      if (LOG_LEVELS.indexOf("info") < threshold) return;
      emit(json ? jsonLine(now(), "info", { msg: "request", ...entry }) : `${accessText(entry)}\n`);
    },
    async flush() {
      while (writing) await writing;
    },
    recent: () => [...recent],
  });
}

/** The text form of an access-log line: `GET /v2/... 200 1234 1.2ms [ns cache user]`. */
export function accessText(entry: AccessEntry): string {
  const extra = [entry.namespace, entry.cache, entry.user].filter((x) => x !== undefined);
  return `${entry.method} ${entry.target} ${entry.status} ${entry.bytes ?? "-"} ${
    entry.durationMs.toFixed(1)
  }ms${extra.length ? ` ${extra.join(" ")}` : ""}`;
}

function jsonLine(time: Date, level: LogLevel, fields: Record<string, unknown>): string {
  return `${JSON.stringify({ time: time.toISOString(), level, ...fields })}\n`;
}
