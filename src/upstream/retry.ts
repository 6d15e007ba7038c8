/**
 * When and how long to wait before trying an upstream request again. Only requests whose
 * answer has not reached a client yet are retried (the client retries only before it hands a
 * 2xx response on), only idempotent ones (the mirror sends GET and HEAD), and only for
 * failures that a second try can cure: connection errors, 408, 429 and 5xx gateway answers.
 * Delays grow exponentially with full jitter, so that many mirrors do not retry in step, and
 * the whole sequence fits in a time budget: a client waiting on a pull should get an answer,
 * even a 503, rather than hang.
 *
 * Which failure is transient is known where it is made (a connection error in transport.ts, a
 * retryable status in errors.ts), so it is marked there (`markTransient`) and read by the retry
 * loop (`transientHint`), without another error type.
 */
import type { RegistryError } from "../oci/errors.ts";

export interface RetryPolicy {
  /** Tries after the first. */
  retries: number;
  /** Time from the first try after which no new try starts. */
  budgetMs: number;
  /** Delay cap of the first retry; doubles per retry. */
  baseDelayMs: number;
  /** Largest delay between two tries. */
  maxDelayMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  retries: 3,
  budgetMs: 15_000,
  baseDelayMs: 250,
  maxDelayMs: 4_000,
};

/** Statuses worth another try: timeout, rate limit and the gateway family. */
const RETRYABLE_STATUSES = new Set([408, 429, 500, 502, 503, 504]);

export function isRetryableStatus(status: number): boolean {
  return RETRYABLE_STATUSES.has(status);
}

/**
 * The delay before retry number `retry` (1 for the first), or undefined to give up: no retries
 * left, or the delay (a Retry-After upstream asked for, or the backoff) would end past the
 * budget. `elapsedMs` is the time since the first try started.
 */
export function retryDelayMs(
  policy: RetryPolicy,
  retry: number,
  elapsedMs: number,
  retryAfterMs?: number,
  random: () => number = Math.random,
): number | undefined {
  if (retry > policy.retries) return undefined;
  const backoff = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (retry - 1));
  const delay = retryAfterMs ?? Math.floor(random() * backoff);
  return elapsedMs + delay > policy.budgetMs ? undefined : delay;
}

/**
 * Why a failure may be cured by trying again (set where the failure is made): a connection
 * error, or a retryable status with the Retry-After upstream sent.
 */
const transient = new WeakMap<RegistryError, { retryAfterMs?: number }>();

/** Marks `error` as one a second try may cure, with the Retry-After upstream sent, if any. */
export function markTransient(error: RegistryError, retryAfterMs?: number): void {
  transient.set(error, { retryAfterMs });
}

/** What `markTransient` recorded for `error`; undefined when it is not worth another try. */
export function transientHint(error: RegistryError): { retryAfterMs?: number } | undefined {
  return transient.get(error);
}

/** Waits `ms`, or rejects with the signal's reason once it aborts. */
export function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", abort);
      resolve();
    }, ms);
    const abort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", abort, { once: true });
  });
}
