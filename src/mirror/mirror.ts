/**
 * The pull-through cache: decides, per request, between serving what storage holds, asking
 * upstream whether a tag moved, fetching a miss, and serving stale content when upstream is
 * unreachable. It knows nothing of HTTP routing; api/ turns its results into responses.
 *
 * Mirror composes one module per policy over a shared context (context.ts): admission first
 * (filters.ts: what the operator mirrors at all), then manifest freshness (manifests.ts), blobs
 * (blobs.ts, downloading through download.ts and fanout.ts) or upstream's lists (listings.ts).
 * Which repository may serve which digest is holdings.ts's to say.
 */
import type { LogFn } from "../runtime/log.ts";
import type { UpstreamRegistry } from "../config/upstreams.ts";
import type { BlobRequest, Descriptor, Page } from "../registry/registry.ts";
import type { Storage } from "../storage/storage.ts";
import { Metrics } from "../runtime/metrics.ts";
import { IN_PLACE_STREAMING, type Streaming } from "../runtime/streaming.ts";
import type { CacheBound } from "./bound.ts";
import { type BlobResult, Blobs } from "./blobs.ts";
import type { MirrorContext } from "./context.ts";
import { Admission, type UpstreamPolicy } from "./filters.ts";
import { Holdings } from "./holdings.ts";
import { Listings } from "./listings.ts";
import { type ManifestResult, Manifests } from "./manifests.ts";
import { StoreHealth } from "./store_health.ts";
import { countingUpstream, type Upstream } from "./upstream_port.ts";

export type { BlobResult, ManifestResult, Upstream };

export interface MirrorOptions {
  storage: Storage;
  upstream: Upstream;
  upstreams: UpstreamRegistry;
  /** Local directory for download spools (same filesystem as the store, when on disk). */
  spoolDir: string;
  log?: LogFn;
  /** Where cache results and upstream requests are counted. */
  metrics?: Metrics;
  /** Clock, for tests. */
  now?: () => number;
  /** How long a pass-through (store full) waits for a client that stopped reading; tests. */
  stalledReaderMs?: number;
  /** The cache size bound, told what is stored and read (absent: the cache only grows). */
  bound?: CacheBound;
  /** Whether namespaces nobody configured are mirrored (default "any"). */
  upstreamPolicy?: UpstreamPolicy;
  /** Hashing and GC pacing for downloads (runtime/streaming.ts); default in place, unpaced. */
  streaming?: Streaming;
}

/**
 * A pass-through download goes at its slowest reader's pace; one that has not taken a 1 MiB
 * block in this long is cut off, so the others go on (about 35 KiB/s at the least).
 */
const STALLED_READER_MS = 30_000;

export class Mirror {
  readonly #admission: Admission;
  readonly #manifests: Manifests;
  readonly #blobs: Blobs;
  readonly #listings: Listings;

  constructor(options: MirrorOptions) {
    const metrics = options.metrics ?? new Metrics();
    const log = options.log ?? ((message) => console.error(message));
    const now = options.now ?? Date.now;
    const context: MirrorContext = {
      storage: options.storage,
      health: new StoreHealth(log, metrics, now),
      upstream: countingUpstream(options.upstream, metrics, options.upstreams),
      upstreams: options.upstreams,
      bound: options.bound,
      log,
      now,
      count: (namespace, kind, result) => {
        metrics.cache.inc({ namespace: metrics.namespaceLabel(namespace), kind, result });
        return result;
      },
    };
    this.#admission = new Admission(options.upstreams, options.upstreamPolicy);
    const holdings = new Holdings(context);
    this.#manifests = new Manifests(context, holdings);
    this.#blobs = new Blobs(context, holdings, {
      spoolDir: options.spoolDir,
      stalledReaderMs: options.stalledReaderMs ?? STALLED_READER_MS,
      streaming: options.streaming ?? IN_PLACE_STREAMING,
    });
    // The referrers fallback tag is a manifest like any other, admitted like any other.
    this.#listings = new Listings(
      context,
      (namespace, repository, reference, accept) =>
        this.getManifest(namespace, repository, reference, accept),
    );
  }

  /** Evicted content leaves the memory caches too (their next read goes to storage). */
  forget(keys: string[]): void {
    this.#manifests.forget(keys);
  }

  /** Blob downloads currently running. */
  get activeDownloads(): number {
    return this.#blobs.activeDownloads;
  }

  /** Resolves when no blob download (or link write) is running (for shutdown and tests). */
  settled(): Promise<void> {
    return this.#blobs.settled();
  }

  /**
   * The manifest for a tag or digest, in a media type the client accepts. For a client that
   * cannot take an index, the linux/amd64 entry is served instead, as registries do.
   */
  async getManifest(
    namespace: string,
    repository: string,
    reference: string,
    accept: string[],
    /** refresh: ask upstream about a cached tag now, whatever its age (warm lists). */
    options: { refresh?: boolean } = {},
  ): Promise<ManifestResult> {
    this.#admission.check(namespace, repository, reference.includes(":") ? undefined : reference);
    return await this.#manifests.get(namespace, repository, reference, accept, options);
  }

  /**
   * A blob, from storage when cached (and, past blob_invalidation_time, still confirmed by
   * upstream), else from the single download every concurrent request follows.
   */
  async getBlob(
    namespace: string,
    repository: string,
    digest: string,
    options: BlobRequest,
  ): Promise<BlobResult> {
    this.#admission.check(namespace, repository);
    return await this.#blobs.get(namespace, repository, digest, options);
  }

  /**
   * Makes sure a blob is cached (warm lists): nothing is read when it is, else it is fetched
   * like any miss. Resolves to the bytes fetched (0 when it was cached).
   */
  async prefetchBlob(namespace: string, repository: string, digest: string): Promise<number> {
    this.#admission.check(namespace, repository);
    return await this.#blobs.prefetch(namespace, repository, digest);
  }

  /**
   * The upstream's tag list (with `n` and `last`), and where its next page starts; the last
   * whole list is served stale when upstream is unreachable (see Listings.tags).
   */
  async listTags(
    namespace: string,
    repository: string,
    options: { n?: number; last?: string },
  ): Promise<Page & { name: string }> {
    this.#admission.check(namespace, repository);
    return await this.#listings.tags(namespace, repository, options);
  }

  /** The referrers of a mirrored manifest (see Listings.referrers). */
  async listReferrers(
    namespace: string,
    repository: string,
    digest: string,
    artifactType?: string,
  ): Promise<Descriptor[]> {
    this.#admission.check(namespace, repository);
    return await this.#listings.referrers(namespace, repository, digest, artifactType);
  }
}
