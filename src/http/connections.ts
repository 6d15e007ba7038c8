/**
 * The listening socket and every connection on it. `Deno.serve` (2.9.6) keeps a connection that
 * sent half a request head, or sits idle between requests, open forever, has no connection cap,
 * and ends its accept loop for good when accept() runs out of descriptors (EMFILE): one client
 * holding enough sockets stopped the whole process. So the server accepts connections itself and
 * hands each to Deno's HTTP engine (`serveHttpOnConnection`, the per-connection half of
 * `Deno.serve`, same hyper code), which lets it:
 *   - close a connection that sent no complete request head within `headerTimeoutMs`, or sat
 *     idle between requests for `idleTimeoutMs` (aborting an idle connection's signal closes it);
 *   - keep at most `maxConnections` open, below the descriptor limit: at the cap a new
 *     connection replaces the one idle the longest, or, when every one is busy, gets a clean 503;
 *   - survive EMFILE in accept(): the listener stays open, idle connections are closed to free
 *     descriptors, and accepting resumes with backoff. Deno itself panics when a descriptor
 *     runs out elsewhere (a new blocking-task thread, measured: "stacker ... left: 24"), so the
 *     cap, not this, is what must keep descriptors free.
 * A request counts as busy from its head until its response was fully sent (`info.completed`),
 * so a long blob download is never cut by the idle timeout.
 */
import type { LogFn } from "../runtime/log.ts";

export interface ConnectionLimits {
  /**
   * Connections kept open at once (and requests in progress at once). Never more than the
   * descriptor limit leaves room for (see `safeMaxConnections`); default that number.
   */
  maxConnections?: number;
  /** How long a new connection may take to send its first request head. */
  headerTimeoutMs: number;
  /** How long a connection may sit idle after a response before it is closed. */
  idleTimeoutMs: number;
}

export type ListenAddress =
  | { kind: "tcp"; hostname: string; port: number }
  | { kind: "unix"; path: string };

export type ConnectionHandler = (
  request: Request,
  info: Deno.ServeHandlerInfo,
) => Response | Promise<Response>;

/** What happened to connections so far (for metrics and tests). */
export interface ConnectionStats {
  /** Connections open now. */
  open: number;
  /** Requests whose response is not yet fully sent. */
  activeRequests: number;
  /** Connections closed for sending no head, or idling, past their timeout. */
  timedOut: number;
  /** Idle connections closed early to make room for a new one (at the cap, or on EMFILE). */
  evicted: number;
  /** Connections and requests answered 503 because every slot was busy. */
  shed: number;
  /** accept() failures for lack of descriptors. */
  acceptErrors: number;
}

export interface ConnectionServer {
  readonly addr: Deno.Addr;
  /** The connection cap in force. */
  readonly maxConnections: number;
  readonly stats: Readonly<ConnectionStats>;
  /** Settles once the listener is closed and every connection has ended. */
  readonly finished: Promise<void>;
  /** Stops accepting, closes idle connections, lets responses in progress finish. */
  shutdown(): Promise<void>;
  /** Closes every connection now, responses in progress included (after a grace period). */
  closeAll(): void;
}

/** The per-connection entry point of Deno's HTTP server; internal, so checked at start-up. */
type ServeOnConnection = (
  connection: Deno.Conn,
  signal: AbortSignal,
  handler: ConnectionHandler,
  onError: (error: unknown) => Response,
  onListen: () => void,
) => { finished: Promise<void>; shutdown(): Promise<void> };

function serveOnConnection(): ServeOnConnection {
  // deno-lint-ignore no-explicit-any
  const internal = (Deno as any)[(Deno as any).internal];
  const serve = internal?.serveHttpOnConnection;
  if (typeof serve !== "function") {
    throw new Error(
      `Deno ${Deno.version.deno} lacks serveHttpOnConnection, which the connection limits ` +
        "need; run it on Deno 2.9.6",
    );
  }
  return serve;
}

/** Sent as is when every connection slot is busy: a short OCI error, then the socket closes. */
const SHED_BODY = JSON.stringify({
  errors: [{ code: "UNAVAILABLE", message: "too many connections; try again", detail: {} }],
});
const SHED_RESPONSE = new TextEncoder().encode(
  "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n" +
    `connection: close\r\ncontent-length: ${SHED_BODY.length}\r\n\r\n${SHED_BODY}`,
);
/** Connections being told 503 at once; past this a new one is closed without a word. */
const MAX_SHEDDING = 32;
/** How long a shed connection is given to send its request and read the 503. */
const SHED_GRACE_MS = 250;
const ACCEPT_BACKOFF_MAX_MS = 1000;
/** A repeated accept failure is logged at most this often. */
const LOG_EVERY_MS = 10_000;

interface Connection {
  readonly abort: AbortController;
  server?: { finished: Promise<void> };
  /** Requests in progress on it (HTTP/2 may carry several). */
  active: number;
  /** Requests it has started; 0 means it is still to send its first head. */
  requests: number;
  /** When it last became idle (accepted, or its last response completed). */
  idleSince: number;
}

export function listen(
  address: ListenAddress,
  handler: ConnectionHandler,
  limits: ConnectionLimits,
  log: LogFn,
): ConnectionServer {
  const serve = serveOnConnection();
  const safe = safeMaxConnections();
  const maxConnections = Math.min(limits.maxConnections ?? safe, safe);
  if (limits.maxConnections !== undefined && limits.maxConnections > safe) {
    log(
      `http: --max-connections ${limits.maxConnections} lowered to ${safe}: the descriptor limit leaves no room for more (raise ulimit -n)`,
      "warn",
    );
  }
  const listener = address.kind === "unix"
    ? Deno.listen({ transport: "unix", path: address.path })
    : Deno.listen({ hostname: address.hostname, port: address.port });
  const stats: ConnectionStats = {
    open: 0,
    activeRequests: 0,
    timedOut: 0,
    evicted: 0,
    shed: 0,
    acceptErrors: 0,
  };
  // Insertion order is the order in which connections last became idle (see `idle`), so the
  // first idle entry is the one idle the longest.
  const connections = new Map<Connection, true>();
  const ended = new Set<Promise<void>>();
  let shedding = 0;
  let closing = false;

  const close = (connection: Connection) => connection.abort.abort();
  const idle = (connection: Connection) => {
    connection.idleSince = performance.now();
    connections.delete(connection);
    connections.set(connection, true);
  };
  const evictIdlest = (): boolean => {
    for (const connection of connections.keys()) {
      if (connection.active === 0 && !connection.abort.signal.aborted) {
        close(connection);
        stats.evicted++;
        return true;
      }
    }
    return false;
  };

  const sweepEveryMs = Math.min(
    1000,
    Math.max(50, Math.min(limits.headerTimeoutMs, limits.idleTimeoutMs) / 4),
  );
  const sweep = setInterval(() => {
    const now = performance.now();
    for (const connection of connections.keys()) {
      if (connection.active > 0 || connection.abort.signal.aborted) continue;
      const allowed = connection.requests === 0 ? limits.headerTimeoutMs : limits.idleTimeoutMs;
      if (now - connection.idleSince >= allowed) {
        close(connection);
        stats.timedOut++;
      }
    }
  }, sweepEveryMs);

  const onError = (error: unknown) => {
    log(`http: handler failed: ${(error as Error)?.stack ?? error}`, "error");
    return new Response(
      JSON.stringify({ errors: [{ code: "UNKNOWN", message: "internal error", detail: {} }] }),
      { status: 500, headers: { "content-type": "application/json" } },
    );
  };

  const adopt = (conn: Deno.Conn) => {
    const connection: Connection = {
      abort: new AbortController(),
      active: 0,
      requests: 0,
      idleSince: performance.now(),
    };
    connections.set(connection, true);
    stats.open++;
    const perRequest: ConnectionHandler = (request, info) => {
      connection.active++;
      connection.requests++;
      stats.activeRequests++;
      const done = () => {
        connection.active--;
        stats.activeRequests--;
        if (connection.active > 0) return;
        if (closing) close(connection); // shutting down: its last response is out
        else idle(connection);
      };
      info.completed.then(done, done);
      if (stats.activeRequests > maxConnections) {
        stats.shed++;
        return new Response(SHED_BODY, {
          status: 503,
          headers: { "content-type": "application/json", "retry-after": "1" },
        });
      }
      return handler(request, info);
    };
    try {
      connection.server = serve(conn, connection.abort.signal, perRequest, onError, () => {});
    } catch (e) {
      log(`http: cannot serve a connection: ${(e as Error).message}`, "warn");
      try {
        conn.close();
      } catch { /* already closed */ }
    }
    const finished = (connection.server?.finished ?? Promise.resolve()).catch(() => {}).then(
      () => {
        connections.delete(connection);
        stats.open--;
      },
    );
    ended.add(finished);
    finished.then(() => ended.delete(finished));
  };

  /** Answers 503 on a connection that gets no slot, reading its request first so the close
   * does not reset the connection before the client has read the answer. */
  const shed = async (conn: Deno.Conn) => {
    stats.shed++;
    if (shedding >= MAX_SHEDDING) return closeQuietly(conn);
    shedding++;
    try {
      await withDeadline(conn.read(new Uint8Array(16 << 10)), SHED_GRACE_MS);
      await withDeadline(conn.write(SHED_RESPONSE), SHED_GRACE_MS);
      await withDeadline(conn.closeWrite(), SHED_GRACE_MS);
      await withDeadline(conn.read(new Uint8Array(16 << 10)), SHED_GRACE_MS);
    } catch { /* the client went away: nothing more to tell it */ }
    closeQuietly(conn);
    shedding--;
  };

  const accepting = (async () => {
    let backoffMs = 10;
    let unlogged = 0;
    let loggedAt = -Infinity;
    while (!closing) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (e) {
        if (closing || e instanceof Deno.errors.BadResource) break;
        // EMFILE/ENFILE (or a connection reset before it was accepted): keep the listener,
        // free a descriptor if an idle connection holds one, and try again shortly.
        stats.acceptErrors++;
        unlogged++;
        const freed = evictIdlest();
        if (performance.now() - loggedAt >= LOG_EVERY_MS) {
          log(
            `http: accept failed ${unlogged} time(s): ${
              (e as Error).message
            }; ${stats.open} connections open${freed ? ", closing the longest idle one" : ""}`,
            "warn",
          );
          loggedAt = performance.now();
          unlogged = 0;
        }
        await new Promise((resolve) => setTimeout(resolve, backoffMs));
        backoffMs = Math.min(ACCEPT_BACKOFF_MAX_MS, backoffMs * 2);
        continue;
      }
      backoffMs = 10;
      if (closing) {
        closeQuietly(conn);
        break;
      }
      if (stats.open >= maxConnections && !evictIdlest()) {
        void shed(conn);
        continue;
      }
      adopt(conn);
    }
  })();

  let stopped: Promise<void> | undefined;
  const shutdown = () => {
    stopped ??= (async () => {
      closing = true;
      clearInterval(sweep);
      try {
        listener.close();
      } catch { /* already closed */ }
      await accepting;
      // Busy connections are closed as their last response completes (see perRequest). Not
      // the engine's own graceful shutdown: aborting a connection after it raises BadResource.
      for (const connection of connections.keys()) {
        if (connection.active === 0) close(connection);
      }
      while (ended.size > 0) await Promise.all(ended);
    })();
    return stopped;
  };

  return {
    addr: listener.addr,
    maxConnections,
    stats,
    finished: accepting.then(() => shutdown()),
    shutdown,
    closeAll: () => {
      for (const connection of connections.keys()) close(connection);
    },
  };
}

/**
 * Plain `Deno.serve`: no timeouts, no cap, and the process can be exhausted as described above.
 * Only for `--unguarded-connections`: behind a proxy that enforces both, and for the bench that
 * measures what the guard costs.
 */
export function listenUnguarded(
  address: ListenAddress,
  handler: ConnectionHandler,
): ConnectionServer {
  const onListen = () => {};
  const server = address.kind === "unix"
    ? Deno.serve({ path: address.path, onListen }, handler)
    : Deno.serve({ hostname: address.hostname, port: address.port, onListen }, handler);
  return {
    addr: server.addr,
    maxConnections: Infinity,
    stats: { open: 0, activeRequests: 0, timedOut: 0, evicted: 0, shed: 0, acceptErrors: 0 },
    finished: server.finished,
    shutdown: () => server.shutdown(),
    closeAll: () => {}, // Deno.serve cannot: the process exits with them open
  };
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch { /* already closed */ }
}

/** Resolves with `promise`, or rejects after `ms`. */
function withDeadline<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("deadline")), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * The highest connection cap: half of the descriptors left after a reserve for the runtime,
 * storage files and spools, so that every connection can also hold a file or an upstream
 * socket. Read from /proc (Linux); elsewhere a fixed number.
 */
export function safeMaxConnections(): number {
  const limit = softDescriptorLimit();
  if (limit === undefined) return 4096;
  return Math.max(16, Math.floor((limit - 128) / 2));
}

function softDescriptorLimit(): number | undefined {
  try {
    const text = Deno.readTextFileSync("/proc/self/limits");
    const match = /^Max open files\s+(\d+|unlimited)/m.exec(text);
    if (!match || match[1] === "unlimited") return undefined;
    return Number(match[1]);
  } catch {
    return undefined;
  }
}
