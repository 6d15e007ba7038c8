/**
 * What GET /readyz answers: ready while the store answers and no shutdown has begun. One
 * storage round trip per second at most, however often probes come (an S3 HEAD each time
 * would cost money and rate limit), and a store that hangs counts as down after a timeout.
 */
import { READINESS_PROBE_KEY } from "../storage/layout.ts";
import type { Storage } from "../storage/storage.ts";

const CHECK_EVERY_MS = 1000;
const STORAGE_TIMEOUT_MS = 2000;

export interface Readiness {
  /** Null when ready, else why not. */
  check(): Promise<string | null>;
  /** From now on not ready: the process is shutting down. */
  shuttingDown(): void;
}

export function readiness(
  storage: Storage,
  { checkEveryMs = CHECK_EVERY_MS, timeoutMs = STORAGE_TIMEOUT_MS, now = () => performance.now() } =
    {},
): Readiness {
  let stopping = false;
  let last: { at: number; result: Promise<string | null> } | undefined;
  const probe = async (): Promise<string | null> => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await Promise.race([
        storage.stat(READINESS_PROBE_KEY),
        new Promise((_, reject) => {
          timer = setTimeout(
            () => reject(new Error(`no answer within ${timeoutMs} ms`)),
            timeoutMs,
          );
        }),
      ]);
      return null;
    } catch (e) {
      return `storage: ${(e as Error)?.message ?? e}`;
    } finally {
      clearTimeout(timer);
    }
  };
  return {
    check() {
      if (stopping) return Promise.resolve("shutting down");
      if (!last || now() - last.at >= checkEveryMs) last = { at: now(), result: probe() };
      return last.result;
    },
    shuttingDown() {
      stopping = true;
    },
  };
}
