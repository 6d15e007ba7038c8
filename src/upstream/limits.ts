/**
 * Per-upstream bounds: how many requests may be in progress at once (a request lasts until its
 * body is read or dropped, so a blob download holds its slot for as long as it streams) and,
 * optionally, how many may start per second. Excess requests wait in order, for a bounded time;
 * past it they fail with 503 and Retry-After instead of piling up on an upstream that is
 * already as busy as the operator allows.
 */
import { RegistryError } from "../oci/errors.ts";

export interface LimitConfig {
  /** Requests in progress at once; absent: no bound. */
  maxConcurrent?: number;
  /** Requests started per second (a bucket of one second's worth); absent: no bound. */
  perSecond?: number;
  /** Longest wait for a turn. */
  queueTimeoutMs: number;
}

interface Waiter {
  grant: (release: () => void) => void;
  reject: (error: unknown) => void;
  timer: ReturnType<typeof setTimeout>;
}

export class Limiter {
  readonly #config: LimitConfig;
  readonly #name: string;
  readonly #now: () => number;
  #inProgress = 0;
  #tokens: number;
  #refilledAt: number;
  #queue: Waiter[] = [];
  #refillTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(name: string, config: LimitConfig, now: () => number = () => performance.now()) {
    this.#name = name;
    this.#config = config;
    this.#now = now;
    this.#tokens = config.perSecond ?? Infinity;
    this.#refilledAt = now();
  }

  get inProgress(): number {
    return this.#inProgress;
  }

  get waiting(): number {
    return this.#queue.length;
  }

  /** Waits for a turn; resolves to the function that gives it back (call it exactly once). */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (this.#queue.length === 0 && this.#canStart()) return Promise.resolve(this.#start());
    return new Promise((grant, reject) => {
      const waiter: Waiter = {
        grant,
        reject,
        timer: setTimeout(() => {
          this.#remove(waiter);
          reject(
            new RegistryError(
              "UNAVAILABLE",
              `upstream ${this.#name} is as busy as configured (${this.#inProgress} requests in progress, ${this.#queue.length} waiting); gave up after ${
                this.#config.queueTimeoutMs / 1000
              } s`,
              { headers: { "Retry-After": "1" } },
            ),
          );
        }, this.#config.queueTimeoutMs),
      };
      this.#queue.push(waiter);
      signal?.addEventListener("abort", () => {
        if (this.#remove(waiter)) reject(signal.reason);
      }, { once: true });
      this.#pump();
    });
  }

  #canStart(): boolean {
    this.#refill();
    return this.#inProgress < (this.#config.maxConcurrent ?? Infinity) && this.#tokens >= 1;
  }

  #start(): () => void {
    this.#inProgress++;
    this.#tokens--;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#inProgress--;
      this.#pump();
    };
  }

  #pump(): void {
    while (this.#queue.length > 0 && this.#canStart()) {
      const waiter = this.#queue.shift()!;
      clearTimeout(waiter.timer);
      waiter.grant(this.#start());
    }
    // Waiting for tokens, not for a slot: come back when the next one is due.
    if (
      this.#queue.length > 0 && this.#tokens < 1 && this.#refillTimer === undefined &&
      this.#inProgress < (this.#config.maxConcurrent ?? Infinity)
    ) {
      const dueMs = (1 - this.#tokens) * 1000 / this.#config.perSecond!;
      this.#refillTimer = setTimeout(() => {
        this.#refillTimer = undefined;
        this.#pump();
      }, Math.ceil(dueMs));
    }
  }

  #refill(): void {
    const perSecond = this.#config.perSecond;
    if (perSecond === undefined) return;
    const now = this.#now();
    this.#tokens = Math.min(perSecond, this.#tokens + (now - this.#refilledAt) * perSecond / 1000);
    this.#refilledAt = now;
  }

  #remove(waiter: Waiter): boolean {
    const index = this.#queue.indexOf(waiter);
    if (index < 0) return false;
    this.#queue.splice(index, 1);
    clearTimeout(waiter.timer);
    return true;
  }
}
