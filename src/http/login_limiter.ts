/**
 * Backoff for failed logins, per user name and per client address: a few failures are free,
 * then each further one locks that key out for twice as long (1 s, 2 s, ... at most 5 min),
 * and a login attempted while locked is answered 429 with Retry-After before any password is
 * checked, so a burst costs neither bcrypt time nor a chance to guess. Failures are forgotten
 * after a quiet quarter of an hour. Memory is bounded: the oldest keys go first.
 *
 * A lock on a user name also stops its owner for a while; that is the price of slowing a guesser
 * who spreads over many addresses.
 */
const FREE_FAILURES = 5;
const MAX_LOCK_MS = 5 * 60_000;
const FORGET_MS = 15 * 60_000;
const MAX_KEYS = 10_000;
const MAX_PENDING = 2;

interface Entry {
  failures: number;
  /** Checks under way: a key may run two at once; more are answered as locked. */
  pending: number;
  lockedUntil: number;
  last: number;
}

export class LoginLimiter {
  readonly #entries = new Map<string, Entry>();
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /** Seconds until `keys` may try again (the longest of their locks), or 0. */
  retryAfter(keys: string[]): number {
    const now = this.#now();
    let until = 0;
    for (const key of keys) {
      const entry = this.#entry(key, now);
      if (entry) until = Math.max(until, entry.lockedUntil);
      if (entry && entry.pending >= MAX_PENDING) until = Math.max(until, now + 1000);
    }
    return until > now ? Math.ceil((until - now) / 1000) : 0;
  }

  failed(keys: string[]): void {
    const now = this.#now();
    for (const key of keys) {
      const entry = this.#touch(key, now);
      entry.failures++;
      entry.last = now;
      if (entry.failures >= FREE_FAILURES) {
        entry.lockedUntil = now +
          Math.min(1000 * 2 ** (entry.failures - FREE_FAILURES), MAX_LOCK_MS);
      }
    }
  }

  /** A password check for `keys` begins (bcrypt is slow: a burst must not run them all). */
  started(keys: string[]): void {
    const now = this.#now();
    for (const key of keys) this.#touch(key, now).pending++;
  }

  finished(keys: string[]): void {
    for (const key of keys) {
      const entry = this.#entries.get(key);
      if (entry && entry.pending > 0) entry.pending--;
    }
  }

  /** The entry for `key`, created if needed and moved last (the map's order is oldest first). */
  #touch(key: string, now: number): Entry {
    const entry = this.#entry(key, now) ?? { failures: 0, pending: 0, lockedUntil: 0, last: now };
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    if (this.#entries.size > MAX_KEYS) this.#entries.delete(this.#entries.keys().next().value!);
    return entry;
  }

  succeeded(keys: string[]): void {
    for (const key of keys) {
      const entry = this.#entries.get(key);
      if (entry) Object.assign(entry, { failures: 0, lockedUntil: 0 });
    }
  }

  #entry(key: string, now: number): Entry | undefined {
    const entry = this.#entries.get(key);
    if (entry && entry.pending === 0 && now - entry.last > FORGET_MS && now >= entry.lockedUntil) {
      this.#entries.delete(key);
      return undefined;
    }
    return entry;
  }
}
