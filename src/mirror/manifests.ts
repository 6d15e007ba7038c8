/**
 * Manifest freshness for mirrored repositories: digests never go stale; a tag is served from
 * its stored link until manifest_invalidation_time, then revalidated with a HEAD (a new digest
 * is fetched), and served stale when upstream is unreachable, refuses, or has little quota left.
 * Fetched manifests are verified before they are stored, with the tag's link and what the
 * repository now holds (holdings.ts). Hot manifests and tag links are kept in memory.
 */
import type { UpstreamRegistry } from "../config/upstreams.ts";
import { digestOf } from "../oci/digest.ts";
import type { LogFn } from "../runtime/log.ts";
import { RegistryError } from "../oci/errors.ts";
import {
  acceptsMediaType,
  ALL_MANIFEST_TYPES,
  detectManifestMediaType,
  indexEntries,
  isIndexType,
  MAX_MANIFEST_BYTES,
} from "../oci/media_types.ts";
import type { CacheResult } from "../registry/registry.ts";
import { digestOfKey, manifestKey, tagKey, type TagLink } from "../storage/layout.ts";
import type { Storage } from "../storage/storage.ts";
import { SingleFlight } from "../runtime/single_flight.ts";
import type { CacheBound } from "./bound.ts";
import type { MirrorContext } from "./context.ts";
import type { Holdings } from "./holdings.ts";
import { LruCache } from "./lru.ts";
import type { StoreHealth } from "./store_health.ts";
import { describe, readLimited, servesStale, type Upstream } from "./upstream_port.ts";

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

/** Memory for hot manifests: a few thousand typical manifests. */
const MANIFEST_MEMORY_BYTES = 16 << 20;
const TAG_LINK_MEMORY_ENTRIES = 10_000;

export class Manifests {
  readonly #storage: Storage;
  readonly #health: StoreHealth;
  readonly #upstream: Upstream;
  readonly #upstreams: UpstreamRegistry;
  readonly #bound: CacheBound | undefined;
  readonly #log: LogFn;
  readonly #now: () => number;
  readonly #count: MirrorContext["count"];
  readonly #holdings: Holdings;
  /** Hot manifests by digest, so warm manifest GETs skip storage. */
  readonly #manifestMemory = new LruCache<ManifestResult>(
    MANIFEST_MEMORY_BYTES,
    (manifest) => manifest.bytes.byteLength + 200,
  );
  /** Hot tag links by storage key (this process's view; storage stays the shared truth). */
  readonly #tagLinkMemory = new LruCache<TagLink>(TAG_LINK_MEMORY_ENTRIES);
  /** One manifest lookup (and upstream fetch) per reference at a time. */
  readonly #manifestFlights = new SingleFlight<Lookup>();

  constructor(context: MirrorContext, holdings: Holdings) {
    this.#storage = context.storage;
    this.#health = context.health;
    this.#upstream = context.upstream;
    this.#upstreams = context.upstreams;
    this.#bound = context.bound;
    this.#log = context.log;
    this.#now = context.now;
    this.#count = context.count;
    this.#holdings = holdings;
  }

  /** Evicted content leaves the memory caches too (their next read goes to storage). */
  forget(keys: string[]): void {
    for (const key of keys) {
      const digest = digestOfKey(key);
      if (digest && key.startsWith("manifests/")) this.#manifestMemory.delete(digest);
      else this.#tagLinkMemory.delete(key);
    }
  }

  /**
   * The manifest for a tag or digest, in a media type the client accepts. For a client that
   * cannot take an index, the linux/amd64 entry is served instead, as registries do.
   */
  async get(
    namespace: string,
    repository: string,
    reference: string,
    accept: string[],
    /** refresh: ask upstream about a cached tag now, whatever its age (warm lists). */
    options: { refresh?: boolean } = {},
  ): Promise<ManifestResult> {
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
      await this.#confirmHeld(namespace, repository, digest);
      return { manifest: stored, cache: this.#count(namespace, "manifest", "hit") };
    }
    const cache = this.#count(namespace, "manifest", "miss");
    return { manifest: await this.#fetchManifest(namespace, repository, digest), cache };
  }

  /** Throws unless the repository holds the manifest (see Holdings.confirm). */
  #confirmHeld(namespace: string, repository: string, digest: string): Promise<void> {
    return this.#holdings.confirm(namespace, repository, digest, async () => {
      const response = await this.#upstream.manifest(namespace, repository, digest, {
        method: "HEAD",
        accept: ALL_MANIFEST_TYPES,
      });
      await response.body?.cancel();
    });
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
    const bytes = await readLimited(response, MAX_MANIFEST_BYTES, `manifest ${reference}`);
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
