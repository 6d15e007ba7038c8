/**
 * What a registry is to the HTTP layer: blobs, manifests, tags, uploads and referrers of named
 * repositories, plus the catalog. Handlers (src/api/hosted/) depend on these interfaces only;
 * local.ts implements them over a `Storage` for hosted repositories. Every method throws
 * RegistryError with the OCI code a client should see (BLOB_UNKNOWN, MANIFEST_INVALID, ...).
 *
 * A repository name is the full validated OCI name (`myorg/app`), never a storage path.
 */
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

export interface Blob extends BlobInfo {
  /** The bytes, or only `range` of them (validated by the caller against `size`). */
  open(range?: ByteRange): Promise<ReadableStream<Uint8Array>>;
  /** A URL the client may fetch the bytes from directly (S3 --s3-redirect). */
  directUrl?(): Promise<string>;
}

export interface BlobStore {
  /** The blob if this repository may serve it, else null. */
  get(name: string, digest: string): Promise<Blob | null>;
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
}

export interface PutManifestResult {
  digest: string;
  /** The subject's digest when the manifest has one (echoed as OCI-Subject). */
  subject?: string;
  /** The `?tag=` parameters applied (echoed as OCI-Tag). */
  tags: string[];
}

export interface ManifestStore {
  /** By tag or digest; MANIFEST_UNKNOWN when absent. */
  get(name: string, reference: string): Promise<Manifest>;
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
  /** Tags sorted lexically, after `last`, at most `n`; NAME_UNKNOWN for no repository. */
  list(name: string, options: { n?: number; last?: string }): Promise<Page>;
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
