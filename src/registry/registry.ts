/**
 * What a registry is to the HTTP layer: blobs, manifests, tags, uploads and referrers of named
 * repositories, plus the catalog. Handlers (src/http/handlers/) depend on these interfaces only; local.ts
 * implements them over a `Storage` for hosted repositories, and mirror/mirrored_registry.ts for
 * mirrored namespaces (pull-through, read-only). Every method throws RegistryError with the OCI
 * code a client should see (BLOB_UNKNOWN, MANIFEST_INVALID, UNSUPPORTED, ...).
 *
 * A repository name is the full validated OCI name (`myorg/app`, or `docker.io/library/alpine`
 * for a mirrored one: its registry, then the repository there), never a storage path.
 */
import type { RangeRequest } from "../oci/range.ts";
import type { ByteRange } from "../storage/storage.ts";

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}

export interface BlobInfo {
  digest: string;
  size: number;
}

/** What the cache did for a mirrored read (X-Cache, the cache metric); absent for hosted. */
export type CacheResult = "hit" | "miss" | "stale" | "revalidated";

/** How a blob is asked for: its bytes or only its size, all of them or a Range. */
export interface BlobRequest {
  body: boolean;
  /** Resolved against the size by the store, which alone may learn it late (a mirror miss). */
  range?: RangeRequest;
}

/** A blob as a store answers for it. */
export interface BlobAnswer {
  digest: string;
  /** Of the whole blob; undefined only when a mirror's upstream did not say. */
  size: number | undefined;
  /** The bytes `body` holds when the request's range applies (else all of them). */
  range?: ByteRange;
  /** Absent when only the size was asked for, for a redirect, and for the empty blob. */
  body?: ReadableStream<Uint8Array>;
  /** A URL the client should fetch the bytes from instead (S3 --s3-redirect). */
  redirect?: string;
  cache?: CacheResult;
}

export interface BlobStore {
  /** The blob as asked for if this repository may serve it, else null. */
  get(name: string, digest: string, request: BlobRequest): Promise<BlobAnswer | null>;
  /** Unlinks the blob from this repository; BLOB_UNKNOWN when it was not linked. */
  delete(name: string, digest: string): Promise<void>;
  /**
   * Links a blob `from` another repository (or, with no `from`, any repository of this
   * registry) into `name` without copying it. False when there is nothing to mount.
   */
  mount(name: string, digest: string, from?: string): Promise<BlobInfo | null>;
}

export interface Manifest {
  digest: string;
  mediaType: string;
  bytes: Uint8Array;
  cache?: CacheResult;
}

export interface PutManifestResult {
  digest: string;
  /** The subject's digest when the manifest has one (echoed as OCI-Subject). */
  subject?: string;
  /** The `?tag=` parameters applied (echoed as OCI-Tag). */
  tags: string[];
}

export interface ManifestStore {
  /**
   * By tag or digest; MANIFEST_UNKNOWN when absent. `accept` (the client's Accept types) lets
   * a mirror serve an index's linux/amd64 entry to a client that takes no index; hosted
   * repositories serve what was pushed.
   */
  get(name: string, reference: string, accept?: string[]): Promise<Manifest>;
  /**
   * Validates and stores a manifest under a tag or its digest, and under `tags` too (the
   * `?tag=` parameters of a push by digest).
   */
  put(
    name: string,
    reference: string,
    bytes: Uint8Array,
    contentType: string | null,
    tags?: string[],
  ): Promise<PutManifestResult>;
  /** By digest: the manifest and every tag on it; by tag: the tag only. */
  delete(name: string, reference: string): Promise<void>;
}

export interface Page {
  items: string[];
  /** The `last` to ask for the next page, when there is one. */
  next?: string;
}

export interface TagStore {
  /**
   * Tags after `last`, at most `n` (hosted: sorted lexically; mirrored: in upstream's order),
   * and the repository's name as its registry calls it; NAME_UNKNOWN for no repository.
   */
  list(name: string, options: { n?: number; last?: string }): Promise<Page & { name: string }>;
}

export interface UploadState {
  id: string;
  /** Bytes received so far. */
  offset: number;
}

export interface UploadStore {
  start(name: string): Promise<UploadState>;
  /** BLOB_UPLOAD_UNKNOWN for an id that is not (or no longer) an upload of `name`. */
  status(name: string, id: string): Promise<UploadState>;
  /**
   * Appends a chunk; `start`, when the client said where it goes, must be the current offset
   * (else RANGE_INVALID 416), and `length`, when given, is the exact size of `body`.
   */
  append(
    name: string,
    id: string,
    body: ReadableStream<Uint8Array> | null,
    chunk: { start?: number; length?: number },
  ): Promise<UploadState>;
  /**
   * Appends the last bytes (if any; `start` and `length` as for append), verifies `digest` over
   * everything and publishes.
   */
  finish(
    name: string,
    id: string,
    digest: string,
    body: ReadableStream<Uint8Array> | null,
    chunk?: { start?: number; length?: number },
  ): Promise<BlobInfo>;
  cancel(name: string, id: string): Promise<void>;
  /** Removes sessions untouched for longer than the expiry; returns how many. */
  expire(): Promise<number>;
}

export interface ReferrerStore {
  /** Manifests whose subject is `digest`, optionally only those of `artifactType`. */
  list(name: string, digest: string, artifactType?: string): Promise<Descriptor[]>;
}

export interface Registry {
  blobs: BlobStore;
  manifests: ManifestStore;
  tags: TagStore;
  uploads: UploadStore;
  referrers: ReferrerStore;
  /** Repository names sorted lexically, after `last`, at most `n`. */
  catalog(options: { n?: number; last?: string }): Promise<Page>;
}
