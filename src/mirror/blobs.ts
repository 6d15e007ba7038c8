/**
 * Blob policy for mirrored repositories: a blob is served from storage when cached (and, past
 * blob_invalidation_time, still confirmed by upstream: or served stale, since content-addressed
 * bytes do not go stale), else from the single download every concurrent request follows
 * (download.ts). Nothing is served, cached or downloading, unless the repository holds the blob
 * (holdings.ts). Under a size bound, every body counts as a reader of its blob until it ends.
 */
import type { UpstreamConfig, UpstreamRegistry } from "../config/upstreams.ts";
import { RegistryError } from "../oci/errors.ts";
import { resolveRange } from "../oci/range.ts";
import type { BlobAnswer, BlobRequest } from "../registry/registry.ts";
import { blobKey } from "../storage/layout.ts";
import type { Storage } from "../storage/storage.ts";
import type { Streaming } from "../runtime/streaming.ts";
import type { CacheBound } from "./bound.ts";
import type { MirrorContext } from "./context.ts";
import { type Download, InflightDownloads } from "./download.ts";
import { heldKey, type Holdings } from "./holdings.ts";
import { LruCache } from "./lru.ts";
import { servesStale, type Upstream } from "./upstream_port.ts";

/** A blob as the mirror answers for it: see BlobAnswer. */
export type BlobResult = Omit<BlobAnswer, "digest">;

/** Blobs whose upstream confirmation (blob_invalidation_time) is remembered. */
const BLOB_CONFIRMATION_ENTRIES = 100_000;

export class Blobs {
  readonly #storage: Storage;
  readonly #upstream: Upstream;
  readonly #upstreams: UpstreamRegistry;
  readonly #bound: CacheBound | undefined;
  readonly #now: () => number;
  readonly #count: MirrorContext["count"];
  readonly #holdings: Holdings;
  readonly #downloads: InflightDownloads;
  /** When upstream last confirmed an old blob (blob_invalidation_time), by namespace+digest. */
  readonly #blobConfirmations = new LruCache<number>(BLOB_CONFIRMATION_ENTRIES);
  /** The repository (`namespace/repository@digest`) a blob download is being fetched for. */
  readonly #fetchingFor = new Map<string, string>();
  /** Link writes that nobody waits for. */
  readonly #pending = new Set<Promise<void>>();

  constructor(
    context: MirrorContext,
    holdings: Holdings,
    downloads: { spoolDir: string; stalledReaderMs: number; streaming: Streaming },
  ) {
    this.#storage = context.storage;
    this.#upstream = context.upstream;
    this.#upstreams = context.upstreams;
    this.#now = context.now;
    this.#count = context.count;
    this.#holdings = holdings;
    const bound = this.#bound = context.bound;
    this.#downloads = new InflightDownloads(downloads.spoolDir, {
      storage: context.storage,
      health: context.health,
      log: context.log,
      stalledReaderMs: downloads.stalledReaderMs,
      streaming: downloads.streaming,
      onPublished: bound && ((digest, size) => {
        bound.index.addBlob(digest, size);
        bound.check();
      }),
    });
  }

  /** Blob downloads currently running. */
  get activeDownloads(): number {
    return this.#downloads.size;
  }

  /** Resolves when no blob download (or link write) is running (for shutdown and tests). */
  async settled(): Promise<void> {
    await this.#downloads.settled();
    while (this.#pending.size > 0) await Promise.all(this.#pending);
  }

  #background(work: Promise<void>): void {
    this.#pending.add(work);
    work.finally(() => this.#pending.delete(work));
  }

  /**
   * A blob, from storage when cached (and, past blob_invalidation_time, still confirmed by
   * upstream), else from the single download every concurrent request follows.
   */
  async get(
    namespace: string,
    repository: string,
    digest: string,
    options: BlobRequest,
  ): Promise<BlobResult> {
    const key = blobKey(digest);
    const result = await this.#blob(namespace, repository, digest, options);
    // Under a size bound: a body counts as a reader until it ends (no eviction under it).
    const index = this.#bound?.index;
    if (!index) return result;
    if (result.size !== undefined && !result.redirect && !index.has(key)) {
      // Stored by another replica (or before a restart lost it): counted from now on.
      if (await this.#storage.stat(key)) index.addBlob(digest, result.size);
    }
    if (!result.body) {
      index.touch(key);
      return result;
    }
    return { ...result, body: index.reading(key, result.body) };
  }

  async #blob(
    namespace: string,
    repository: string,
    digest: string,
    options: BlobRequest,
  ): Promise<BlobResult> {
    const key = blobKey(digest);
    // Before anything else: no download to follow and no cached bytes unless this repository
    // holds the blob. A blob neither cached nor downloading is confirmed by fetching it.
    const held = heldKey(namespace, repository, digest);
    let confirmByFetch = false;
    if (!await this.#holdings.known(namespace, repository, digest)) {
      const downloading = this.#downloads.running(digest) !== undefined;
      if (downloading && this.#fetchingFor.get(digest) === held) confirmByFetch = true;
      else if (downloading || await this.#storage.stat(key)) {
        await this.#confirmHeld(namespace, repository, digest);
      } else confirmByFetch = true;
    }
    // A download under way (or publishing) answers for the blob: no storage request, and never
    // a half-written object from a store whose writes are not atomic (s3rver).
    const running = confirmByFetch
      ? null
      : await this.#downloads.running(digest)?.catch(() => null);
    if (running && (options.body || running.expectedSize !== undefined)) {
      const followed = !options.body
        ? { size: running.expectedSize, range: resolveRange(options.range, running.expectedSize) }
        : this.#follow(running, options);
      // Not stored yet: joins the one download.
      if (followed) return { ...followed, cache: this.#count(namespace, "blob", "miss") };
    }
    const cached = confirmByFetch
      ? null
      : await this.#cachedBlob(namespace, repository, digest, options);
    if (cached) return { ...cached, cache: this.#count(namespace, "blob", "hit") };
    const cache = this.#count(namespace, "blob", "miss");
    if (!options.body) {
      const response = await this.#upstream.blob(namespace, repository, digest, { method: "HEAD" });
      await response.body?.cancel();
      await this.#holdings.hold(namespace, repository, digest);
      const length = response.headers.get("content-length");
      const size = length !== null ? Number(length) : undefined;
      return { size, range: resolveRange(options.range, size), cache };
    }
    // A pass-through download (store full) may have dropped the first bytes by the time this
    // request follows it; it is no longer joinable then, so the next join starts a fresh one.
    // The repository a download is fetched for is noted from its start, so that concurrent
    // requests for the same repository join it instead of asking upstream with a HEAD each.
    // The whole blob, or (resuming a body cut mid-way) its bytes from `from` on.
    const fetch = async (checkStore: boolean, from?: number) => {
      this.#fetchingFor.set(digest, held);
      try {
        // Re-checked inside the flight: a download may have been published since the lookup.
        if (checkStore && from === undefined && await this.#storage.stat(key)) return null;
        const response = await this.#upstream.blob(namespace, repository, digest, {
          method: "GET",
          ...(from === undefined ? {} : { range: `bytes=${from}-` }),
        });
        // Not awaited: the download starts now; settled() waits for the link.
        this.#background(this.#holdings.hold(namespace, repository, digest));
        return response;
      } finally {
        if (this.#fetchingFor.get(digest) === held) this.#fetchingFor.delete(digest);
      }
    };
    for (let attempt = 0; attempt < 3; attempt++) {
      let download = await this.#downloads.join(digest, (from) => fetch(true, from), namespace);
      // A download fetched for this same repository confirms it (or fails for all alike);
      // another repository's download, or a blob published meanwhile, does not.
      if (
        confirmByFetch && !this.#holdings.has(held) && this.#fetchingFor.get(digest) !== held
      ) {
        await this.#confirmHeld(namespace, repository, digest);
        confirmByFetch = false;
      }
      if (!download) {
        const published = await this.#cachedBlob(namespace, repository, digest, options);
        if (published) return { ...published, cache };
        // Storage said yes to stat and no to read: fetch anyway rather than ask it again.
        download = await this.#downloads.join(digest, (from) => fetch(false, from), namespace);
      }
      if (!download) break;
      const followed = this.#follow(download, options);
      if (followed) return { ...followed, cache };
    }
    throw new RegistryError("UNAVAILABLE", `blob ${digest} is neither stored nor fetchable`);
  }

  /**
   * A response that follows a download (from its spool, or from storage once published); null
   * when the download can no longer serve it.
   */
  #follow(download: Download, options: BlobRequest): BlobResult | null {
    const range = resolveRange(options.range, download.expectedSize);
    const body = download.reader(range);
    return body ? { size: download.expectedSize, range, body } : null;
  }

  /** The stored blob as the request wants it, or null when it is not (or no longer) served. */
  async #cachedBlob(
    namespace: string,
    repository: string,
    digest: string,
    options: BlobRequest,
  ): Promise<BlobResult | null> {
    const key = blobKey(digest);
    if (options.body && !options.range && !this.#storage.directUrl) {
      // The common case, a whole-blob GET, opens the blob at once: size and age come with it,
      // so it costs one storage round trip instead of a stat (an S3 HEAD) plus a read.
      const object = await this.#storage.read(key);
      if (!object) return null;
      if (await this.#blobStillConfirmed(namespace, repository, digest, object.modified)) {
        return { size: object.size, body: object.body };
      }
      await object.body.cancel();
      return null;
    }
    const info = await this.#storage.stat(key);
    if (!info) return null;
    if (!await this.#blobStillConfirmed(namespace, repository, digest, info.modified)) return null;
    const range = resolveRange(options.range, info.size);
    if (!options.body) return { size: info.size, range };
    const redirect = range ? undefined : await this.#storage.directUrl?.(key);
    if (redirect) return { size: info.size, redirect };
    const object = await this.#storage.read(key, range);
    return object ? { size: info.size, range, body: object.body } : null; // null: deleted meanwhile
  }

  /** Whether a cached blob may be served without asking upstream (blob_invalidation_time). */
  async #blobStillConfirmed(
    namespace: string,
    repository: string,
    digest: string,
    stored: Date,
  ): Promise<boolean> {
    const config: UpstreamConfig = this.#upstreams.get(namespace);
    const confirmationKey = `${namespace}/${repository}@${digest}`;
    const confirmed = Math.max(stored.getTime(), this.#blobConfirmations.get(confirmationKey) ?? 0);
    if (this.#now() - confirmed < config.blobInvalidationMs) return true;
    if (this.#upstream.quotaLow?.(namespace)) return true; // content-addressed: still right
    try {
      const response = await this.#upstream.blob(namespace, repository, digest, {
        method: "HEAD",
        retry: false, // cached bytes are at hand
      });
      await response.body?.cancel();
      this.#blobConfirmations.set(confirmationKey, this.#now());
      return true;
    } catch (e) {
      if (servesStale(e)) return true; // content-addressed: stale bytes are still the right bytes
      throw e;
    }
  }

  /**
   * Throws unless the repository holds the blob (see Holdings.confirm); upstream's HEAD also
   * counts as a confirmation for blob_invalidation_time.
   */
  #confirmHeld(namespace: string, repository: string, digest: string): Promise<void> {
    return this.#holdings.confirm(namespace, repository, digest, async () => {
      const response = await this.#upstream.blob(namespace, repository, digest, { method: "HEAD" });
      await response.body?.cancel();
      this.#blobConfirmations.set(heldKey(namespace, repository, digest), this.#now());
    });
  }

  /**
   * Makes sure a blob is cached (warm lists): nothing is read when it is, else it is fetched
   * like any miss. Resolves to the bytes fetched (0 when it was cached).
   */
  async prefetch(namespace: string, repository: string, digest: string): Promise<number> {
    if (await this.#storage.stat(blobKey(digest))) {
      // Warm content counts as recently used: a size bound evicts it last.
      this.#bound?.index.touch(blobKey(digest));
      return 0;
    }
    const blob = await this.get(namespace, repository, digest, { body: true });
    let bytes = 0;
    for await (const chunk of blob.body ?? []) bytes += chunk.byteLength;
    return bytes;
  }
}
