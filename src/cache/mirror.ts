/**
 * The pull-through cache: decides, per request, between serving what storage holds, asking
 * upstream whether a tag moved, fetching a miss, and serving stale content when upstream is
 * unreachable. It knows nothing of HTTP routing; api/ turns its results into responses.
 *
 * Which repository may serve which digest is holdings.ts's to say.
 */
import type { LogFn } from "../log.ts";
import { digestOf } from "../digest.ts";
import type { UpstreamConfig, UpstreamRegistry } from "../config.ts";
import { isUnavailable, RegistryError } from "../oci/errors.ts";
import {
  acceptsMediaType,
  ALL_MANIFEST_TYPES,
  detectManifestMediaType,
  indexEntries,
  isIndexType,
  MAX_MANIFEST_BYTES,
} from "../oci/media_types.ts";
import {
  blobKey,
  digestOfKey,
  manifestKey,
  mirroredReferrersKey,
  tagKey,
  type TagLink,
  tagListKey,
} from "../storage/layout.ts";
import { resolveRange } from "../oci/range.ts";
import type {
  BlobAnswer,
  BlobRequest,
  CacheResult,
  Descriptor,
  Page,
} from "../registry/registry.ts";
import type { Storage } from "../storage/storage.ts";
import type { CacheBound } from "./bound.ts";
import { type Download, InflightDownloads } from "./download.ts";
import { Admission, type UpstreamPolicy } from "./filters.ts";
import {
  countingUpstream,
  describe,
  readLimited,
  servesStale,
  type Upstream,
} from "./upstream_port.ts";
import { heldKey, Holdings } from "./holdings.ts";
import { LruCache } from "./lru.ts";
import { StoreHealth } from "./store_health.ts";
import { Metrics } from "../metrics.ts";
import { SingleFlight } from "../single_flight.ts";

export type { Upstream };

export interface ManifestResult {
  digest: string;
  mediaType: string;
  bytes: Uint8Array;
  /** What the cache did for this request (set on what getManifest returns). */
  cache?: CacheResult;
}

/** A manifest lookup: the manifest, and how the cache came by it. */
interface Lookup {
  manifest: ManifestResult;
  cache: CacheResult;
}

/** A blob as the mirror answers for it: see BlobAnswer. */
export type BlobResult = Omit<BlobAnswer, "digest">;

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
}

/**
 * A pass-through download goes at its slowest reader's pace; one that has not taken a 1 MiB
 * block in this long is cut off, so the others go on (about 35 KiB/s at the least).
 */
const STALLED_READER_MS = 30_000;
/** Memory for hot manifests: a few thousand typical manifests. */
const MANIFEST_MEMORY_BYTES = 16 << 20;
/** Largest whole tag list stored for stale serving (about 300k tags). */
const MAX_TAG_LIST_BYTES = 16 << 20;
const TAG_LINK_MEMORY_ENTRIES = 10_000;
/** Blobs whose upstream confirmation (blob_invalidation_time) is remembered. */
const BLOB_CONFIRMATION_ENTRIES = 100_000;

export class Mirror {
  readonly #storage: Storage;
  readonly #upstream: Upstream;
  readonly #upstreams: UpstreamRegistry;
  readonly #downloads: InflightDownloads;
  readonly #log: LogFn;
  readonly #now: () => number;
  readonly #metrics: Metrics;
  readonly #health: StoreHealth;
  /** Hot manifests by digest, so warm manifest GETs skip storage. */
  readonly #manifestMemory = new LruCache<ManifestResult>(
    MANIFEST_MEMORY_BYTES,
    (manifest) => manifest.bytes.byteLength + 200,
  );
  /** Hot tag links by storage key (this process's view; storage stays the shared truth). */
  readonly #tagLinkMemory = new LruCache<TagLink>(TAG_LINK_MEMORY_ENTRIES);
  /** One manifest lookup (and upstream fetch) per reference at a time. */
  readonly #manifestFlights = new SingleFlight<Lookup>();
  readonly #admission: Admission;
  /** When upstream last confirmed an old blob (blob_invalidation_time), by namespace+digest. */
  readonly #blobConfirmations = new LruCache<number>(BLOB_CONFIRMATION_ENTRIES);
  readonly #bound: CacheBound | undefined;
  readonly #holdings: Holdings;
  /** The repository (`namespace/repository@digest`) a blob download is being fetched for. */
  readonly #fetchingFor = new Map<string, string>();

  constructor(options: MirrorOptions) {
    this.#storage = options.storage;
    this.#metrics = options.metrics ?? new Metrics();
    this.#upstream = countingUpstream(options.upstream, this.#metrics, options.upstreams);
    this.#upstreams = options.upstreams;
    this.#log = options.log ?? ((message) => console.error(message));
    this.#now = options.now ?? Date.now;
    this.#admission = new Admission(options.upstreams, options.upstreamPolicy);
    this.#health = new StoreHealth(this.#log, this.#metrics, this.#now);
    this.#holdings = new Holdings({ storage: this.#storage, health: this.#health, log: this.#log });
    const bound = this.#bound = options.bound;
    this.#downloads = new InflightDownloads(options.spoolDir, {
      storage: options.storage,
      health: this.#health,
      log: this.#log,
      stalledReaderMs: options.stalledReaderMs ?? STALLED_READER_MS,
      onPublished: bound && ((digest, size) => {
        bound.index.addBlob(digest, size);
        bound.check();
      }),
    });
  }

  /** Evicted content leaves the memory caches too (their next read goes to storage). */
  forget(keys: string[]): void {
    for (const key of keys) {
      const digest = digestOfKey(key);
      if (digest && key.startsWith("manifests/")) this.#manifestMemory.delete(digest);
      else this.#tagLinkMemory.delete(key);
    }
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

  /** Link writes that nobody waits for. */
  readonly #pending = new Set<Promise<void>>();

  #background(work: Promise<void>): void {
    this.#pending.add(work);
    work.finally(() => this.#pending.delete(work));
  }

  // ---- manifests -------------------------------------------------------------------------

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
    // One lookup per reference at a time: concurrent requests share the storage read and any
    // upstream request it leads to.
    const refresh = options.refresh === true;
    const { manifest, cache } = await this.#manifestFlights.run(
      `${namespace}/${repository}/${reference}${refresh ? " refresh" : ""}`,
      () =>
        reference.includes(":")
          ? this.#manifestByDigest(namespace, repository, reference)
          : this.#manifestByTag(namespace, repository, reference, refresh),
    );
    this.#bound?.index.touch(manifestKey(manifest.digest));
    // Served for this repository: what it names is this repository's too (before a child).
    void this.#holdings.holdManifest(namespace, repository, manifest, false);
    if (acceptsMediaType(accept, manifest.mediaType)) return { ...manifest, cache };
    if (isIndexType(manifest.mediaType)) {
      const entry = pickDefaultPlatform(manifest.bytes, accept);
      if (entry) {
        const child = await this.#manifestByDigest(namespace, repository, entry.digest);
        this.#bound?.index.touch(manifestKey(child.manifest.digest));
        if (acceptsMediaType(accept, child.manifest.mediaType)) {
          return { ...child.manifest, cache: child.cache };
        }
      }
    }
    throw new RegistryError(
      "MANIFEST_UNKNOWN",
      `manifest ${reference} is ${manifest.mediaType}, which the client's Accept header does not allow`,
    );
  }

  async #manifestByDigest(
    namespace: string,
    repository: string,
    digest: string,
  ): Promise<Lookup> {
    const stored = await this.#storedManifest(digest);
    if (stored) {
      await this.#holdings.confirm(namespace, repository, digest, async () => {
        const response = await this.#upstream.manifest(namespace, repository, digest, {
          method: "HEAD",
          accept: ALL_MANIFEST_TYPES,
        });
        await response.body?.cancel();
      });
      return { manifest: stored, cache: this.#count(namespace, "manifest", "hit") };
    }
    const cache = this.#count(namespace, "manifest", "miss");
    return { manifest: await this.#fetchManifest(namespace, repository, digest), cache };
  }

  async #manifestByTag(
    namespace: string,
    repository: string,
    tag: string,
    refresh = false,
  ): Promise<Lookup> {
    const config = this.#upstreams.get(namespace);
    const link = await this.#readTagLink(namespace, repository, tag);
    const stored = link ? await this.#storedManifest(link.digest) : null;
    if (!link || !stored) {
      const cache = this.#count(namespace, "manifest", "miss");
      return { manifest: await this.#fetchManifest(namespace, repository, tag), cache };
    }
    if (!refresh && this.#now() - link.confirmedAt < config.manifestInvalidationMs) {
      return { manifest: stored, cache: this.#count(namespace, "manifest", "hit") };
    }
    if (this.#upstream.quotaLow?.(namespace)) {
      // The quota is for what is not cached; this tag is served as it was last confirmed.
      return { manifest: stored, cache: this.#count(namespace, "manifest", "stale") };
    }
    try {
      const fresh = await this.#revalidateTag(namespace, repository, tag, link, stored);
      return { manifest: fresh, cache: this.#count(namespace, "manifest", "revalidated") };
    } catch (e) {
      if (!servesStale(e)) throw e;
      this.#log(
        `serving stale ${namespace}/${repository}:${tag} (${link.digest}): upstream ${describe(e)}`,
        "warn",
      );
      return { manifest: stored, cache: this.#count(namespace, "manifest", "stale") };
    }
  }

  /** HEAD upstream: same digest refreshes the link; a new digest is fetched. */
  async #revalidateTag(
    namespace: string,
    repository: string,
    tag: string,
    link: TagLink,
    cached: ManifestResult,
  ): Promise<ManifestResult> {
    const response = await this.#upstream.manifest(namespace, repository, tag, {
      method: "HEAD",
      accept: ALL_MANIFEST_TYPES,
      retry: false, // a cached answer is at hand: serve it rather than wait for retries
    });
    await response.body?.cancel();
    const digest = response.headers.get("docker-content-digest");
    if (digest !== link.digest) return await this.#fetchManifest(namespace, repository, tag);
    // A link that cannot be recorded (store full) still leaves the manifest confirmed: serve it.
    await this.#writeTagLink(namespace, repository, tag, { ...link, confirmedAt: this.#now() });
    return cached;
  }

  /** GET a manifest upstream, verify it, store it (and the tag link for tags). */
  async #fetchManifest(
    namespace: string,
    repository: string,
    reference: string,
  ): Promise<ManifestResult> {
    const response = await this.#upstream.manifest(namespace, repository, reference, {
      method: "GET",
      accept: ALL_MANIFEST_TYPES,
    });
    const bytes = await readLimited(response, MAX_MANIFEST_BYTES, reference);
    const digest = digestOf(bytes);
    const announced = response.headers.get("docker-content-digest");
    const isDigestReference = reference.includes(":");
    if (isDigestReference ? digest !== reference : announced !== null && announced !== digest) {
      throw new RegistryError(
        "UPSTREAM_ERROR",
        `upstream sent a manifest with digest ${digest} for ${reference}${
          announced && !isDigestReference ? ` (it announced ${announced})` : ""
        }; not cached`,
      );
    }
    const contentType = response.headers.get("content-type")?.split(";")[0].trim();
    const mediaType = detectManifestMediaType(bytes, contentType);
    if (!mediaType) {
      throw new RegistryError(
        "UPSTREAM_ERROR",
        `upstream sent an unparseable manifest for ${reference}`,
      );
    }
    const stored = await this.#health.write(
      `manifest ${digest} passed through uncached`,
      () => this.#storage.write(manifestKey(digest), bytes, { digest }),
      { kind: "manifest", namespace },
    );
    if (!stored) return { digest, bytes, mediaType }; // verified, but not cached
    this.#manifestMemory.set(digest, { digest, bytes, mediaType });
    if (this.#bound) {
      this.#bound.index.addManifest(digest, bytes);
      this.#bound.check();
    }
    await this.#holdings.holdManifest(namespace, repository, { digest, bytes }, true);
    if (!isDigestReference) {
      await this.#writeTagLink(namespace, repository, reference, {
        digest,
        mediaType,
        size: bytes.byteLength,
        confirmedAt: this.#now(),
      });
    }
    return { digest, bytes, mediaType };
  }

  /** A stored manifest by digest, from memory when hot. */
  async #storedManifest(digest: string): Promise<ManifestResult | null> {
    const hot = this.#manifestMemory.get(digest);
    if (hot) return hot;
    const bytes = await this.#storage.readBytes(manifestKey(digest));
    if (!bytes) return null;
    const manifest = { digest, bytes, mediaType: mediaTypeOf(bytes) };
    this.#manifestMemory.set(digest, manifest);
    // Stored by another replica since the index was built: counted from now on.
    this.#bound?.index.addManifest(digest, bytes);
    return manifest;
  }

  async #readTagLink(namespace: string, repository: string, tag: string): Promise<TagLink | null> {
    const key = tagKey(namespace, repository, tag);
    const hot = this.#tagLinkMemory.get(key);
    if (hot) return hot;
    const bytes = await this.#storage.readBytes(key);
    if (!bytes) return null;
    try {
      const link = JSON.parse(new TextDecoder().decode(bytes)) as TagLink;
      if (typeof link.digest !== "string" || typeof link.confirmedAt !== "number") return null;
      this.#tagLinkMemory.set(key, link);
      return link;
    } catch {
      return null; // a damaged link is treated as a miss and rewritten
    }
  }

  async #writeTagLink(namespace: string, repository: string, tag: string, link: TagLink) {
    const key = tagKey(namespace, repository, tag);
    const stored = await this.#health.write(
      `tag link ${namespace}/${repository}:${tag} not recorded`,
      () => this.#storage.write(key, new TextEncoder().encode(JSON.stringify(link))),
    );
    if (stored) {
      this.#tagLinkMemory.set(key, link);
      this.#bound?.index.setTag(key, link.digest);
    }
  }

  // ---- blobs -----------------------------------------------------------------------------

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
        await this.#confirmHeldBlob(namespace, repository, digest);
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
        await this.#confirmHeldBlob(namespace, repository, digest);
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

  /** Counts a lookup's result, and hands it back for the response to say (X-Cache). */
  #count(namespace: string, kind: "manifest" | "blob", result: CacheResult): CacheResult {
    this.#metrics.cache.inc({ namespace: this.#metrics.namespaceLabel(namespace), kind, result });
    return result;
  }

  /**
   * Throws unless the repository holds the blob (see Holdings.confirm); upstream's HEAD also
   * counts as a confirmation for blob_invalidation_time.
   */
  #confirmHeldBlob(namespace: string, repository: string, digest: string): Promise<void> {
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
  async prefetchBlob(namespace: string, repository: string, digest: string): Promise<number> {
    this.#admission.check(namespace, repository);
    if (await this.#storage.stat(blobKey(digest))) {
      // Warm content counts as recently used: a size bound evicts it last.
      this.#bound?.index.touch(blobKey(digest));
      return 0;
    }
    const blob = await this.getBlob(namespace, repository, digest, { body: true });
    let bytes = 0;
    for await (const chunk of blob.body ?? []) bytes += chunk.byteLength;
    return bytes;
  }

  // ---- tags ------------------------------------------------------------------------------

  /**
   * The upstream's tag list (with `n` and `last`), and where its next page starts. A whole
   * list (no `n`, no `last`) is also stored, and served stale when upstream is unreachable,
   * refuses, or rate-limits.
   */
  async listTags(
    namespace: string,
    repository: string,
    options: { n?: number; last?: string },
  ): Promise<Page & { name: string }> {
    this.#admission.check(namespace, repository);
    const query = new URLSearchParams();
    if (options.n !== undefined) query.set("n", String(options.n));
    if (options.last !== undefined) query.set("last", options.last);
    const whole = options.n === undefined && options.last === undefined;
    const key = tagListKey(namespace, repository);
    let response: Response;
    try {
      response = await this.#upstream.tags(namespace, repository, query);
    } catch (e) {
      const cached = whole && servesStale(e) ? await this.#storage.readBytes(key) : null;
      if (!cached) throw e;
      this.#log(`serving stale tag list of ${namespace}/${repository}: ${describe(e)}`);
      return parseTagList(cached, repository, options.last);
    }
    const bytes = await readLimited(response, MAX_TAG_LIST_BYTES, `tags of ${repository}`);
    const page = parseTagList(bytes, repository, options.last);
    const next = nextLast(response.headers.get("link"));
    if (next !== undefined) page.next = next;
    if (whole) {
      await this.#health.write(
        `tag list of ${namespace}/${repository} not recorded`,
        () => this.#storage.write(key, bytes),
      );
    }
    return page;
  }

  /**
   * The referrers of a mirrored manifest: upstream's referrers API, else (upstream has none) the
   * fallback tag `sha256-<hex>` the spec defines, fetched and cached like any manifest. The API's
   * answer is stored too, so an unreachable upstream still gets the last list (stale).
   */
  async listReferrers(
    namespace: string,
    repository: string,
    digest: string,
    artifactType?: string,
  ): Promise<Descriptor[]> {
    this.#admission.check(namespace, repository);
    const all = await this.#referrers(namespace, repository, digest);
    return artifactType === undefined ? all : all.filter((d) => d.artifactType === artifactType);
  }

  async #referrers(namespace: string, repository: string, digest: string): Promise<Descriptor[]> {
    const key = mirroredReferrersKey(namespace, repository, digest);
    let response: Response | undefined;
    try {
      response = await this.#upstream.referrers?.(namespace, repository, digest);
    } catch (e) {
      if (isUnavailable(e)) {
        const cached = await this.#storage.readBytes(key);
        if (cached) {
          this.#log(`serving stale referrers of ${digest} in ${namespace}/${repository}`);
          return parseDescriptors(cached) ?? [];
        }
      }
      if (!(e instanceof RegistryError && e.code === "MANIFEST_UNKNOWN")) throw e;
    }
    if (response) {
      const bytes = await readLimited(response, MAX_MANIFEST_BYTES, `referrers of ${digest}`);
      const descriptors = parseDescriptors(bytes);
      if (!descriptors) {
        throw new RegistryError("UPSTREAM_ERROR", `upstream's referrers of ${digest} are no index`);
      }
      await this.#health.write(
        `referrers of ${digest} in ${namespace}/${repository} not recorded`,
        () =>
          this.#storage.write(
            key,
            new TextEncoder().encode(JSON.stringify({ manifests: descriptors })),
          ),
      );
      return descriptors;
    }
    const [algorithm, hex] = digest.split(":");
    try {
      const index = await this.getManifest(namespace, repository, `${algorithm}-${hex}`, [
        "application/vnd.oci.image.index.v1+json",
      ]);
      return parseDescriptors(index.bytes) ?? [];
    } catch (e) {
      if (e instanceof RegistryError && e.code === "MANIFEST_UNKNOWN") return [];
      throw e;
    }
  }
}

/**
 * An upstream's tag list body. Some upstreams (distribution 2.8) ignore `last` without `n`:
 * it is applied here as well.
 */
function parseTagList(
  bytes: Uint8Array,
  repository: string,
  last: string | undefined,
): Page & { name: string } {
  let body: { name?: unknown; tags?: unknown };
  try {
    body = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new RegistryError("UPSTREAM_ERROR", "upstream's tag list is not JSON", { cause: e });
  }
  const tags = Array.isArray(body?.tags) ? body.tags.map(String) : [];
  return {
    name: typeof body?.name === "string" ? body.name : repository,
    items: last === undefined ? tags : tags.filter((tag) => tag > last),
  };
}

/** The `last` of upstream's `Link: </v2/repo/tags/list?last=x&n=y>; rel="next"`. */
function nextLast(link: string | null): string | undefined {
  const match = link ? /<([^>]*)>\s*;\s*rel="?next"?/.exec(link) : null;
  if (!match) return undefined;
  return new URL(match[1], "http://upstream").searchParams.get("last") ?? undefined;
}

/** The `manifests` of an image index, or null when `bytes` is no index. */
function parseDescriptors(bytes: Uint8Array): Descriptor[] | null {
  try {
    const doc = JSON.parse(new TextDecoder().decode(bytes));
    return Array.isArray(doc?.manifests) ? doc.manifests : null;
  } catch {
    return null;
  }
}

function mediaTypeOf(bytes: Uint8Array): string {
  return detectManifestMediaType(bytes) ?? "application/octet-stream";
}

/** The linux/amd64 entry of an index whose media type the client accepts, else the first one. */
function pickDefaultPlatform(bytes: Uint8Array, accept: string[]) {
  const entries = indexEntries(bytes).filter((entry) => acceptsMediaType(accept, entry.mediaType));
  return entries.find((entry) =>
    entry.platform?.os === "linux" && entry.platform?.architecture === "amd64"
  ) ?? entries[0];
}
