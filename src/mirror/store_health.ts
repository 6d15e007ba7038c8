/**
 * Whether the store can take writes. A full disk (or quota) is a storage condition, not an
 * upstream error: the cache keeps serving what it has and passes the rest through uncached, and
 * this is where that state is kept, logged and exported. It heals by itself: every write is
 * still tried, and the first one that succeeds clears the state.
 */
import type { LogFn } from "../runtime/log.ts";
import { isStorageFull, type RegistryError } from "../oci/errors.ts";
import type { Metrics } from "../runtime/metrics.ts";

/** While full, refusals after the first are logged at most this often (as a count). */
const LOG_EVERY_MS = 60_000;

export class StoreHealth {
  #full: RegistryError | undefined;
  #unlogged = 0;
  #loggedAt = 0;
  readonly #log: LogFn;
  readonly #metrics: Metrics;
  readonly #now: () => number;

  constructor(log: LogFn, metrics: Metrics, now: () => number = Date.now) {
    this.#log = log;
    this.#metrics = metrics;
    this.#now = now;
    metrics.gauge(
      "oci_registry_storage_full",
      "1 while the store refuses writes for lack of space (content is passed through uncached), else 0.",
      () => this.#full ? 1 : 0,
    );
  }

  get full(): boolean {
    return this.#full !== undefined;
  }

  /** A write to the store succeeded: there is space (again). */
  stored(): void {
    if (!this.#full) return;
    this.#full = undefined;
    this.#log("store has space again: caching resumed");
  }

  /**
   * Runs a write to the store. False when the store is full (noted, logged, counted as
   * `uncached` when content goes out without being stored); other failures throw.
   */
  async write(
    what: string,
    write: () => Promise<void>,
    uncached?: { kind: "manifest" | "blob"; namespace: string },
  ): Promise<boolean> {
    try {
      await write();
    } catch (e) {
      if (!isStorageFull(e)) throw e;
      this.refused(what, e as RegistryError, uncached);
      return false;
    }
    this.stored();
    return true;
  }

  /**
   * A write was refused for lack of space. `uncached` names the kind (and namespace) of content
   * served without being stored (counted as cache result "uncached"); absent when cached content
   * was served.
   */
  refused(
    what: string,
    error: RegistryError,
    uncached?: { kind: "manifest" | "blob"; namespace: string },
  ): void {
    if (uncached) {
      this.#metrics.cache.inc({
        namespace: this.#metrics.namespaceLabel(uncached.namespace),
        kind: uncached.kind,
        result: "uncached",
      });
    }
    const first = this.#full === undefined;
    this.#full = error;
    const now = this.#now();
    if (!first && now - this.#loggedAt < LOG_EVERY_MS) {
      this.#unlogged++;
      return;
    }
    const more = this.#unlogged > 0 ? ` (and ${this.#unlogged} more writes refused)` : "";
    this.#unlogged = 0;
    this.#loggedAt = now;
    this.#log(
      `store full: ${what}${more}: ${error.message}; serving what is cached, passing the rest through uncached`,
      "warn",
    );
  }
}
