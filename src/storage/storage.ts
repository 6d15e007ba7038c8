/**
 * The storage contract every back-end (filesystem, S3) fulfils, checked by one shared test
 * suite (tests/storage_contract.ts). Keys are slash-separated relative paths built only by
 * layout.ts; back-ends still reject anything that could escape their root.
 */
import { RegistryError } from "../oci/errors.ts";

/** Inclusive byte range, as in HTTP `Range: bytes=start-end`. */
export interface ByteRange {
  start: number;
  end: number;
}

export interface ObjectInfo {
  /** Total size of the stored object in bytes. */
  size: number;
  /** When the object was last written. */
  modified: Date;
}

export interface ObjectBody extends ObjectInfo {
  /** The object's bytes, or only the requested range of them. */
  body: ReadableStream<Uint8Array>;
}

export interface WriteOptions {
  /**
   * When given, the bytes are hashed while written and the object is published only if they
   * match; otherwise the write throws RegistryError DIGEST_INVALID and nothing is visible.
   */
  digest?: string;
  /** When given, a different length is rejected (RegistryError SIZE_INVALID). */
  size?: number;
}

export interface Storage {
  /** Human-readable description for logs (never contains secrets). */
  readonly description: string;

  /** Size and age of an object, or null when absent. */
  stat(key: string): Promise<ObjectInfo | null>;

  /** Streams an object (or a range of it), or null when absent. A range past the end throws RANGE_INVALID. */
  read(key: string, range?: ByteRange): Promise<ObjectBody | null>;

  /** Reads a small object (manifest, tag link) whole, or null when absent. */
  readBytes(key: string): Promise<Uint8Array | null>;

  /**
   * Stores an object atomically: readers see the old object (or none) until the new one is
   * complete and verified. Concurrent writers of the same key are safe; the last one wins.
   */
  write(
    key: string,
    data: Uint8Array | ReadableStream<Uint8Array>,
    options?: WriteOptions,
  ): Promise<void>;

  /**
   * Publishes a complete local file (a verified download spool) under `key`. The back-end may
   * move the file instead of copying it, so the caller must not use `path` afterwards.
   */
  publishFile(key: string, path: string, options?: WriteOptions): Promise<void>;

  /**
   * Moves an object to another key without the caller streaming its bytes (a rename on disk, a
   * server-side copy in S3). Readers of `to` see the old object (or none) until the whole
   * object is there; `from` is gone afterwards. An absent `from` throws.
   */
  move(from: string, to: string): Promise<void>;

  /** Removes an object; absent objects are not an error. */
  delete(key: string): Promise<void>;

  /** Every key below `prefix` (a directory-like prefix ending in "/"), in no particular order. */
  list(prefix: string): AsyncIterable<string>;

  /**
   * A short-lived URL from which a client can GET the object directly. Present only when the
   * back-end and its configuration offer it (S3 with --s3-redirect): callers check for it.
   */
  directUrl?(key: string): Promise<string>;

  /** Releases connections and timers. */
  close?(): Promise<void>;
}

/** Rejects keys that are not plain relative paths (defence in depth: layout.ts builds keys). */
export function assertSafeKey(key: string): void {
  if (
    key.length === 0 || key.startsWith("/") || key.includes("\\") || key.includes("\0") ||
    key.split("/").some((part) => part === "" || part === "." || part === "..")
  ) {
    throw new TypeError(`unsafe storage key: ${JSON.stringify(key)}`);
  }
}

/** Validates a range against the object size (end is clamped, like HTTP does). */
export function checkRange(range: ByteRange, size: number): void {
  if (
    !Number.isSafeInteger(range.start) || !Number.isSafeInteger(range.end) || range.start < 0 ||
    range.start > range.end || range.start >= size
  ) {
    throw new RegistryError(
      "RANGE_INVALID",
      `range ${range.start}-${range.end} is not satisfiable for ${size} bytes`,
      { headers: { "Content-Range": `bytes */${size}` } },
    );
  }
}
