/**
 * What upstreams say about their rate limits, kept per upstream and credential: Docker Hub's
 * `ratelimit-limit: 100;w=21600` / `ratelimit-remaining: 76;w=21600` (the IETF draft's form) on
 * every answer, and `Retry-After` on a 429 (or a 503). The mirror reads this to stop spending
 * quota on revalidation when little is left, and to answer 429 itself, with a correct
 * Retry-After, instead of sending requests that upstream will refuse.
 */
import type { UpstreamConfig } from "../config/upstreams.ts";

/** The last known state for one upstream and credential. */
export interface RateLimitState {
  /** Requests allowed per window, when upstream said. */
  limit?: number;
  /** Requests left in the current window, when upstream said. */
  remaining?: number;
  /** Length of the window in seconds (`w=`), when upstream said. */
  windowSeconds?: number;
  /** When upstream last said anything (ms since the epoch). */
  observedAt: number;
  /** Until when upstream asked not to be called (a 429/503 Retry-After), ms since the epoch. */
  blockedUntil?: number;
}

/** Longest Retry-After honoured; beyond it the value is taken as this (a broken header). */
const MAX_RETRY_AFTER_MS = 6 * 3_600_000;
/** Entries kept at most (one per upstream and credential: a few in practice). */
const MAX_ENTRIES = 1000;

export class RateLimits {
  readonly #states = new Map<string, RateLimitState>();
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /** Records what an upstream answer says; `key` names the upstream and credential. */
  observe(key: string, status: number, headers: Headers): void {
    const limit = parseQuota(headers.get("ratelimit-limit"));
    const remaining = parseQuota(headers.get("ratelimit-remaining"));
    const retryAfter = status === 429 || status === 503
      ? parseRetryAfter(headers.get("retry-after"), this.#now())
      : undefined;
    const throttled = status === 429 && retryAfter === undefined;
    if (!limit && !remaining && retryAfter === undefined && !throttled) return;
    const now = this.#now();
    const state: RateLimitState = { ...this.#states.get(key), observedAt: now };
    if (limit) [state.limit, state.windowSeconds] = [limit.count, limit.windowSeconds];
    if (remaining) state.remaining = remaining.count;
    if (retryAfter !== undefined) state.blockedUntil = now + retryAfter;
    // A 429 without Retry-After: back off a little rather than not at all.
    else if (throttled) state.blockedUntil = now + 10_000;
    else if (status < 400) state.blockedUntil = undefined;
    this.#states.delete(key); // re-inserted last: the oldest entry is the first to go
    this.#states.set(key, state);
    if (this.#states.size > MAX_ENTRIES) this.#states.delete(this.#states.keys().next().value!);
  }

  get(key: string): RateLimitState | undefined {
    return this.#states.get(key);
  }

  /** Milliseconds until upstream may be asked again (0 when it may be now). */
  waitMs(key: string): number {
    const until = this.#states.get(key)?.blockedUntil;
    return until === undefined ? 0 : Math.max(0, until - this.#now());
  }

  /**
   * Whether this key's quota is at or below `reserve`: revalidation should stop spending it.
   * A count older than its window is not believed (the window has started again).
   */
  isLow(key: string, reserve: number): boolean {
    const state = this.#states.get(key);
    if (!state || this.waitMs(key) > 0) return this.waitMs(key) > 0;
    if (state.remaining === undefined) return false;
    const windowMs = (state.windowSeconds ?? 0) * 1000;
    if (windowMs > 0 && this.#now() - state.observedAt > windowMs) return false;
    return state.remaining <= reserve;
  }

  /** Every key with its state, for metrics and the status page. */
  entries(): [string, RateLimitState][] {
    return [...this.#states];
  }
}

/** Rate limits are per upstream and per credential (Docker Hub counts per account or address). */
export function rateLimitKey(upstream: UpstreamConfig): string {
  // The user only tells credentials apart; a space cannot occur in a namespace or host.
  const credential = upstream.username === undefined ? "anonymous" : `user:${upstream.username}`;
  return `${upstream.namespace} ${upstream.host} ${credential}`;
}

/** Whose limit a `rateLimitKey` is, for metrics: the namespace, and no user name, only its kind. */
export function rateLimitKeyOwner(
  key: string,
): { namespace: string; credential: "configured" | "anonymous" } {
  const [namespace, _host, user] = key.split(" ", 3);
  return { namespace, credential: user === "anonymous" ? "anonymous" : "configured" };
}

/** `100`, `100;w=21600` or `100, 100;w=21600` (the first number counts). */
export function parseQuota(
  value: string | null,
): { count: number; windowSeconds?: number } | undefined {
  if (value === null) return undefined;
  const match = /^\s*(\d{1,12})\s*(?:;\s*w\s*=\s*(\d{1,12}))?/.exec(value);
  if (!match) return undefined;
  return {
    count: Number(match[1]),
    windowSeconds: match[2] === undefined ? undefined : Number(match[2]),
  };
}

/** Retry-After as delta-seconds or an HTTP date, in milliseconds from `now`. */
export function parseRetryAfter(value: string | null, now: number): number | undefined {
  if (value === null) return undefined;
  const text = value.trim();
  let ms: number;
  if (/^\d{1,10}$/.test(text)) ms = Number(text) * 1000;
  else {
    const date = Date.parse(text);
    if (Number.isNaN(date)) return undefined;
    ms = Math.max(0, date - now);
  }
  return Math.min(ms, MAX_RETRY_AFTER_MS);
}
