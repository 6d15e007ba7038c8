/**
 * Per-client limits (--client-rate, --client-downloads): a request rate (a token bucket holding
 * one second's worth, at least one request) and a number of blob downloads being sent at once. A client is the user
 * a request authenticated as, else its address. Over a limit, the request is answered 429
 * TOOMANYREQUESTS with Retry-After before any work is done for it.
 *
 * Downloads are counted until Deno reports the response sent (ServeHandlerInfo.completed), so
 * the blob bytes themselves pass untouched: no wrapper stream on the warm path.
 */
import { RegistryError } from "../oci/errors.ts";

export interface ClientLimitSettings {
  /** Requests per second per client; undefined: no limit. */
  rate?: number;
  /** Blob downloads at once per client; undefined: no limit. */
  downloads?: number;
}

interface Bucket {
  tokens: number;
  at: number;
}

/** More clients than this are forgotten oldest first (a full bucket is the same as none). */
const MAX_CLIENTS = 10_000;

export class ClientLimits {
  readonly #settings: ClientLimitSettings;
  readonly #now: () => number;
  readonly #buckets = new Map<string, Bucket>();
  readonly #downloads = new Map<string, number>();
  /** Requests refused, by limit (for /metrics). */
  readonly refused = { rate: 0, downloads: 0 };

  constructor(
    settings: ClientLimitSettings,
    now: () => number = performance.now.bind(performance),
  ) {
    this.#settings = settings;
    this.#now = now;
  }

  /** Takes one request from `client`'s rate, or throws 429 with the seconds until the next. */
  admit(client: string): void {
    const rate = this.#settings.rate;
    if (rate === undefined) return;
    const now = this.#now();
    const capacity = Math.max(1, rate);
    const bucket = this.#buckets.get(client) ?? { tokens: capacity, at: now };
    bucket.tokens = Math.min(capacity, bucket.tokens + ((now - bucket.at) / 1000) * rate);
    bucket.at = now;
    this.#buckets.delete(client); // re-inserted last: the map's order is least recent first
    this.#buckets.set(client, bucket);
    if (this.#buckets.size > MAX_CLIENTS) this.#buckets.delete(this.#buckets.keys().next().value!);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return;
    }
    this.refused.rate++;
    const seconds = Math.max(1, Math.ceil((1 - bucket.tokens) / rate));
    throw new RegistryError("TOOMANYREQUESTS", "too many requests from this client", {
      headers: { "retry-after": String(seconds) },
    });
  }

  /**
   * Counts a download for `client` until `sent` settles, or throws 429 when it already has as
   * many as allowed.
   */
  startDownload(client: string, sent: Promise<unknown> | undefined): void {
    const max = this.#settings.downloads;
    if (max === undefined || sent === undefined) return;
    const running = this.#downloads.get(client) ?? 0;
    if (running >= max) {
      this.refused.downloads++;
      throw new RegistryError(
        "TOOMANYREQUESTS",
        `at most ${max} downloads at once per client`,
        { headers: { "retry-after": "1" } },
      );
    }
    this.#downloads.set(client, running + 1);
    const done = () => {
      const left = (this.#downloads.get(client) ?? 1) - 1;
      if (left <= 0) this.#downloads.delete(client);
      else this.#downloads.set(client, left);
    };
    sent.then(done, done);
  }

  /** Downloads being sent now, all clients together. */
  get activeDownloads(): number {
    let total = 0;
    for (const n of this.#downloads.values()) total += n;
    return total;
  }
}
