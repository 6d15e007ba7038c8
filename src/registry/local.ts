/**
 * Hosted repositories over a `Storage` (filesystem or S3): the Registry interfaces with nothing
 * upstream. Blob and manifest bytes are content-addressed and shared (layout.ts); what a
 * repository holds is its links, so a delete unlinks and a mount links.
 *
 * Nothing unverified becomes visible: blob bytes are published by a storage write that checks
 * their digest (or, for an upload that is one chunk, by moving the chunk once its digest was
 * checked), and links are written only after the bytes they name exist. Upload chunks live
 * under uploads/<id>/ until the final PUT streams them, in order, through that verifying write.
 * Every step is a storage object, so replicas sharing a bucket continue each other's uploads.
 */
import { type BlockHasher, IN_PLACE_STREAMING, type Streaming } from "../runtime/streaming.ts";
import { digestOf, parseDigest } from "../oci/digest.ts";
import { RegistryError } from "../oci/errors.ts";
import { type ParsedManifest, parseManifest } from "../oci/manifest.ts";
import { resolveRange } from "../oci/range.ts";
import { isTag } from "../oci/reference.ts";
import {
  blobKey,
  blobLinkKey,
  hostedPrefix,
  hostedTagKey,
  manifestKey,
  type ManifestLink,
  manifestLinkKey,
  referrerKey,
  referrersPrefix,
  type TagLink,
  uploadChunkKey,
  uploadPrefix,
  UPLOADS_PREFIX,
} from "../storage/layout.ts";
import type { Storage } from "../storage/storage.ts";
import type {
  BlobAnswer,
  BlobInfo,
  BlobRequest,
  Descriptor,
  Manifest,
  Page,
  PutManifestResult,
  Registry,
  UploadState,
} from "./registry.ts";

export interface LocalRegistryOptions {
  storage: Storage;
  /** The first path segments whose repositories are hosted (for the catalog). */
  namespaces: string[];
  /**
   * Accept manifests whose layers or child manifests are not (yet) here (the config blob is
   * still required). Off: such a push is MANIFEST_BLOB_UNKNOWN.
   */
  sparseManifests?: boolean;
  /** An upload session untouched this long is removed by `uploads.expire()`. */
  uploadExpiryMs?: number;
  now?: () => number;
  /** How pushed blobs are hashed (runtime/streaming.ts); default in place. */
  streaming?: Pick<Streaming, "hasher">;
}

interface UploadInfo {
  name: string;
  /** Milliseconds since the epoch of the last chunk (or the start). */
  touched: number;
  /**
   * Where each stored chunk starts, in order, and the bytes received: the session's state is
   * this one object, read back by key (listings may lag behind writes on some S3 services).
   */
  parts: number[];
  offset: number;
}

const UPLOAD_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const DAY_MS = 24 * 60 * 60 * 1000;
const EMPTY = new Uint8Array(0);

export class LocalRegistry implements Registry {
  readonly #storage: Storage;
  readonly #namespaces: string[];
  readonly #uploadExpiryMs: number;
  readonly #sparse: boolean;
  readonly #now: () => number;
  readonly #hasher: Streaming["hasher"];
  /** One change at a time per upload session in this process (chunks must not interleave). */
  readonly #uploadQueues = new Map<string, Promise<unknown>>();
  /**
   * The sha256 of sessions this process received from their first byte, kept while their
   * chunks arrive here in order, so that the final PUT need not read them again. A session
   * another replica added to simply falls back to hashing what is stored.
   */
  readonly #running = new Map<string, { hasher: BlockHasher; offset: number }>();

  constructor(options: LocalRegistryOptions) {
    this.#storage = options.storage;
    this.#namespaces = options.namespaces;
    this.#uploadExpiryMs = options.uploadExpiryMs ?? DAY_MS;
    this.#sparse = options.sparseManifests ?? false;
    this.#now = options.now ?? Date.now;
    this.#hasher = (options.streaming ?? IN_PLACE_STREAMING).hasher;
  }

  // ---- blobs ----

  readonly blobs = {
    get: async (
      name: string,
      digest: string,
      request: BlobRequest,
    ): Promise<BlobAnswer | null> => {
      if (!await this.#storage.stat(blobLinkKey(name, digest))) return null;
      return await this.#readBlob(digest, request);
    },
    delete: async (name: string, digest: string): Promise<void> => {
      const link = blobLinkKey(name, digest);
      if (!await this.#storage.stat(link)) {
        throw new RegistryError("BLOB_UNKNOWN", `blob ${digest} is not in ${name}`);
      }
      await this.#storage.delete(link);
    },
    mount: async (name: string, digest: string, from?: string): Promise<BlobInfo | null> => {
      if (from !== undefined && !await this.#storage.stat(blobLinkKey(from, digest))) return null;
      const info = await this.#storage.stat(blobKey(digest));
      if (!info) return null;
      await this.#storage.write(blobLinkKey(name, digest), EMPTY);
      return { digest, size: info.size };
    },
  };

  async #readBlob(digest: string, request: BlobRequest): Promise<BlobAnswer | null> {
    const key = blobKey(digest);
    const storage = this.#storage;
    if (request.body && !request.range && !storage.directUrl) {
      // A whole-blob GET opens it at once: one storage request, its size included.
      const object = await storage.read(key);
      return object && { digest, size: object.size, body: object.body };
    }
    const info = await storage.stat(key);
    if (!info) return null;
    const range = resolveRange(request.range, info.size);
    // An empty blob has no range to read: answered without touching storage again.
    if (!request.body || info.size === 0) return { digest, size: info.size, range };
    if (!range && storage.directUrl) {
      return { digest, size: info.size, redirect: await storage.directUrl(key) };
    }
    const object = await storage.read(key, range);
    if (!object) throw new RegistryError("BLOB_UNKNOWN", `blob ${digest} is gone`);
    return { digest, size: info.size, range, body: object.body };
  }

  // ---- manifests ----

  readonly manifests = {
    get: async (name: string, reference: string): Promise<Manifest> => {
      const digest = isTag(reference) ? (await this.#tag(name, reference))?.digest : reference;
      const link = digest ? await this.#manifestLink(name, digest) : null;
      const bytes = link ? await this.#storage.readBytes(manifestKey(digest!)) : null;
      if (!link || !bytes) {
        throw new RegistryError("MANIFEST_UNKNOWN", `manifest ${reference} is not in ${name}`);
      }
      return { digest: digest!, mediaType: link.mediaType, bytes };
    },
    put: (
      name: string,
      reference: string,
      bytes: Uint8Array,
      contentType: string | null,
      tags: string[] = [],
    ) => this.#putManifest(name, reference, bytes, contentType, tags),
    delete: async (name: string, reference: string): Promise<void> => {
      if (isTag(reference)) {
        const key = hostedTagKey(name, reference);
        if (!await this.#storage.stat(key)) {
          throw new RegistryError("MANIFEST_UNKNOWN", `tag ${reference} is not in ${name}`);
        }
        return await this.#storage.delete(key);
      }
      const link = await this.#manifestLink(name, reference);
      if (!link) {
        throw new RegistryError("MANIFEST_UNKNOWN", `manifest ${reference} is not in ${name}`);
      }
      // Tags and the referrer entry first: nothing may point at a manifest that is gone.
      for await (const key of this.#storage.list(`${hostedPrefix(name)}_tags/`)) {
        const tag = await this.#readJson<TagLink>(key);
        if (tag?.digest === reference) await this.#storage.delete(key);
      }
      const bytes = await this.#storage.readBytes(manifestKey(reference));
      const subject = bytes ? subjectOf(bytes) : undefined;
      if (subject) await this.#storage.delete(referrerKey(name, subject, reference));
      await this.#storage.delete(manifestLinkKey(name, reference));
    },
  };

  async #putManifest(
    name: string,
    reference: string,
    bytes: Uint8Array,
    contentType: string | null,
    extraTags: string[],
  ): Promise<PutManifestResult> {
    const parsed = parseManifest(bytes, contentType);
    for (const tag of extraTags) {
      if (!isTag(tag)) throw new RegistryError("MANIFEST_INVALID", `invalid tag ${tag}`);
    }
    const digest = isTag(reference)
      ? await this.#tagDigest(name, reference, bytes)
      : digestOf(bytes, parseDigest(reference).algorithm);
    if (!isTag(reference) && digest !== reference) {
      throw new RegistryError(
        "DIGEST_INVALID",
        `manifest digest is ${digest}, not ${reference}`,
      );
    }
    await this.#checkReferences(name, parsed);
    await this.#storage.write(manifestKey(digest), bytes, { digest });
    const link: ManifestLink = { mediaType: parsed.mediaType, size: bytes.byteLength };
    await this.#storage.write(manifestLinkKey(name, digest), json(link));
    if (parsed.subject) {
      const entry: Descriptor = { mediaType: parsed.mediaType, digest, size: bytes.byteLength };
      if (parsed.artifactType) entry.artifactType = parsed.artifactType;
      if (parsed.annotations) entry.annotations = parsed.annotations;
      await this.#storage.write(referrerKey(name, parsed.subject.digest, digest), json(entry));
    }
    const tags = isTag(reference) ? [reference, ...extraTags] : extraTags;
    for (const tagName of new Set(tags)) {
      const tag: TagLink = {
        digest,
        mediaType: parsed.mediaType,
        size: bytes.byteLength,
        confirmedAt: this.#now(),
      };
      await this.#storage.write(hostedTagKey(name, tagName), json(tag));
    }
    return { digest, subject: parsed.subject?.digest, tags: [...new Set(extraTags)] };
  }

  /**
   * The digest of a push by tag: sha256, unless the tag already names these very bytes under
   * another algorithm (pushed by a sha512 digest): a re-push keeps that digest.
   */
  async #tagDigest(name: string, tag: string, bytes: Uint8Array): Promise<string> {
    const current = await this.#tag(name, tag);
    if (current && !current.digest.startsWith("sha256:")) {
      const again = digestOf(bytes, parseDigest(current.digest).algorithm);
      if (again === current.digest) return again;
    }
    return digestOf(bytes);
  }

  /** Every blob and child manifest must already be in this repository. */
  async #checkReferences(name: string, parsed: ParsedManifest): Promise<void> {
    const missing = async (key: string) => !await this.#storage.stat(key);
    // Sparse: only the config must be here.
    const blobs = [...parsed.config ? [parsed.config] : [], ...this.#sparse ? [] : parsed.layers];
    for (const blob of blobs) {
      if (await missing(blobLinkKey(name, blob.digest))) {
        throw new RegistryError(
          "MANIFEST_BLOB_UNKNOWN",
          `blob ${blob.digest} is not in ${name}; push it first`,
          { detail: { digest: blob.digest } },
        );
      }
    }
    for (const child of this.#sparse ? [] : parsed.manifests) {
      if (await missing(manifestLinkKey(name, child.digest))) {
        throw new RegistryError(
          "MANIFEST_BLOB_UNKNOWN",
          `manifest ${child.digest} is not in ${name}; push it first`,
          { detail: { digest: child.digest } },
        );
      }
    }
  }

  #tag(name: string, tag: string): Promise<TagLink | null> {
    return this.#readJson<TagLink>(hostedTagKey(name, tag));
  }

  #manifestLink(name: string, digest: string): Promise<ManifestLink | null> {
    return this.#readJson<ManifestLink>(manifestLinkKey(name, digest));
  }

  async #readJson<T>(key: string): Promise<T | null> {
    const bytes = await this.#storage.readBytes(key);
    if (!bytes) return null;
    try {
      return JSON.parse(new TextDecoder().decode(bytes)) as T;
    } catch {
      return null; // a torn or foreign object reads as absent
    }
  }

  // ---- tags, referrers, catalog ----

  readonly tags = {
    list: async (
      name: string,
      options: { n?: number; last?: string },
    ): Promise<Page & { name: string }> => {
      const prefix = `${hostedPrefix(name)}_tags/`;
      const tags: string[] = [];
      for await (const key of this.#storage.list(prefix)) tags.push(key.slice(prefix.length));
      if (tags.length === 0 && !await this.#exists(name)) {
        throw new RegistryError("NAME_UNKNOWN", `repository ${name} is not known`);
      }
      return { name, ...paginate(tags, options) };
    },
  };

  async #exists(name: string): Promise<boolean> {
    for await (const _ of this.#storage.list(hostedPrefix(name))) return true;
    return false;
  }

  readonly referrers = {
    list: async (name: string, digest: string, artifactType?: string): Promise<Descriptor[]> => {
      const found: Descriptor[] = [];
      for await (const key of this.#storage.list(referrersPrefix(name, digest))) {
        const entry = await this.#readJson<Descriptor>(key);
        if (!entry) continue;
        // A referrer whose manifest was unlinked meanwhile is not listed.
        if (!await this.#storage.stat(manifestLinkKey(name, entry.digest))) continue;
        if (artifactType === undefined || entry.artifactType === artifactType) found.push(entry);
      }
      return found.sort((a, b) => a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : 0);
    },
  };

  async catalog(options: { n?: number; last?: string }): Promise<Page> {
    const names = new Set<string>();
    for (const namespace of this.#namespaces) {
      for await (const key of this.#storage.list(`${hostedPrefix(namespace)}`)) {
        const at = key.search(/\/_(?:manifests|tags)\//);
        if (at > 0) names.add(key.slice("repositories/".length, at));
      }
    }
    return paginate([...names], options);
  }

  // ---- uploads ----

  readonly uploads = {
    start: async (name: string): Promise<UploadState> => {
      const id = crypto.randomUUID();
      await this.#writeUploadInfo(id, { name, touched: 0, parts: [], offset: 0 });
      return { id, offset: 0 };
    },
    status: async (name: string, id: string): Promise<UploadState> => {
      return { id, offset: (await this.#uploadInfo(name, id)).offset };
    },
    append: (
      name: string,
      id: string,
      body: ReadableStream<Uint8Array> | null,
      chunk: { start?: number; length?: number },
    ) =>
      this.#serialized(id, async () => {
        const info = await this.#uploadInfo(name, id);
        const offset = info.offset;
        await checkStart(chunk.start, offset, body);
        let running = this.#running.get(id);
        if (running?.offset !== offset) {
          this.#dropRunning(id);
          running = undefined;
        }
        if (!running && offset === 0 && this.#running.size < MAX_RUNNING_HASHES) {
          running = { hasher: this.#hasher("sha256"), offset: 0 };
          this.#running.set(id, running);
        }
        let written: number;
        try {
          written = await this.#writeChunk(
            id,
            offset,
            body && running ? tap(body, running.hasher) : body,
            chunk.length,
          );
        } catch (e) {
          this.#dropRunning(id);
          throw e;
        }
        if (running) running.offset += written;
        if (written > 0) info.parts.push(offset);
        info.offset = offset + written;
        await this.#writeUploadInfo(id, info);
        return { id, offset: info.offset };
      }),
    finish: (
      name: string,
      id: string,
      digest: string,
      body: ReadableStream<Uint8Array> | null,
      chunk: { start?: number; length?: number } = {},
    ) =>
      this.#serialized(id, async () => {
        parseDigest(digest);
        const info = await this.#uploadInfo(name, id);
        const keys = info.parts.map((at) => uploadChunkKey(id, at));
        const received = info.offset;
        await checkStart(chunk.start, received, body);
        const length = chunk.length;
        const storage = this.#storage;
        if (keys.length === 1 && body === null) {
          // One chunk holds everything (docker's PATCH then PUT): check its digest (hashed on
          // arrival, else where it lies), then move it into place instead of writing it again.
          const running = this.#running.get(id);
          if (running && running.offset === received && digest.startsWith("sha256:")) {
            this.#running.delete(id);
            const actual = await running.hasher.digest();
            if (actual !== digest) {
              throw new RegistryError(
                "DIGEST_INVALID",
                `content digest ${actual} does not match ${digest}`,
              );
            }
          } else {
            await this.#verify(keys[0], digest);
          }
          await storage.move(keys[0], blobKey(digest));
        } else {
          const content = keys.length === 0 && body
            ? body
            : concatStreams(keys.map((key) => async () => (await storage.read(key))!.body), body);
          // The digest is checked while the bytes are written; a mismatch publishes nothing.
          const whole = keys.length === 0 && length !== undefined ? { size: length } : {};
          await storage.write(blobKey(digest), content, { digest, ...whole });
        }
        const size = (await storage.stat(blobKey(digest)))!.size;
        await storage.write(blobLinkKey(name, digest), EMPTY);
        await this.#removeUpload(id);
        return { digest, size };
      }),
    cancel: (name: string, id: string) =>
      this.#serialized(id, async () => {
        await this.#uploadInfo(name, id);
        await this.#removeUpload(id);
      }),
    expire: async (): Promise<number> => {
      const ids = new Set<string>();
      for await (const key of this.#storage.list(UPLOADS_PREFIX)) {
        ids.add(key.slice(UPLOADS_PREFIX.length).split("/")[0]);
      }
      let removed = 0;
      for (const id of ids) {
        const info = await this.#readJson<UploadInfo>(`${uploadPrefix(id)}info`);
        // A session without info is a start that failed half-way: as dead as an expired one.
        if (info && this.#now() - info.touched < this.#uploadExpiryMs) continue;
        await this.#removeUpload(id);
        removed++;
      }
      return removed;
    },
  };

  /** DIGEST_INVALID unless the object at `key` hashes to `digest`. */
  async #verify(key: string, digest: string): Promise<void> {
    const object = await this.#storage.read(key);
    if (!object) throw new RegistryError("BLOB_UPLOAD_UNKNOWN", `upload chunk ${key} is gone`);
    // Hashed on a libcrypto thread when it can, a few blocks behind the reads.
    const hasher = this.#hasher(parseDigest(digest).algorithm);
    const pending: Promise<void>[] = [];
    try {
      for await (const chunk of object.body) {
        pending.push(hasher.update(chunk));
        if (pending.length >= 4) await pending.shift();
      }
    } catch (e) {
      hasher.dispose();
      throw e;
    }
    const actual = await hasher.digest();
    if (actual !== digest) {
      throw new RegistryError(
        "DIGEST_INVALID",
        `content digest ${actual} does not match ${digest}`,
      );
    }
  }

  async #serialized<T>(id: string, step: () => Promise<T>): Promise<T> {
    const previous = this.#uploadQueues.get(id) ?? Promise.resolve();
    const current = previous.catch(() => {}).then(step);
    this.#uploadQueues.set(id, current);
    try {
      return await current;
    } finally {
      if (this.#uploadQueues.get(id) === current) this.#uploadQueues.delete(id);
    }
  }

  async #writeUploadInfo(id: string, info: UploadInfo): Promise<void> {
    info.touched = this.#now();
    await this.#storage.write(`${uploadPrefix(id)}info`, json(info));
  }

  /** The session's info, or BLOB_UPLOAD_UNKNOWN for a bad, expired or foreign id. */
  async #uploadInfo(name: string, id: string): Promise<UploadInfo> {
    const info = UPLOAD_ID.test(id)
      ? await this.#readJson<UploadInfo>(`${uploadPrefix(id)}info`)
      : null;
    if (
      !info || info.name !== name || !Array.isArray(info.parts) ||
      this.#now() - info.touched >= this.#uploadExpiryMs
    ) {
      throw new RegistryError("BLOB_UPLOAD_UNKNOWN", `no upload ${id} in progress for ${name}`);
    }
    return info;
  }

  async #writeChunk(
    id: string,
    offset: number,
    body: ReadableStream<Uint8Array> | null,
    length: number | undefined,
  ): Promise<number> {
    if (!body) {
      if (length) throw new RegistryError("SIZE_INVALID", `expected ${length} bytes, got none`);
      return 0;
    }
    const key = uploadChunkKey(id, offset);
    await this.#storage.write(key, body, length === undefined ? {} : { size: length });
    const size = (await this.#storage.stat(key))?.size ?? 0;
    if (size === 0) await this.#storage.delete(key); // an empty chunk adds nothing
    return size;
  }

  #dropRunning(id: string): void {
    this.#running.get(id)?.hasher.dispose();
    this.#running.delete(id);
  }

  async #removeUpload(id: string): Promise<void> {
    this.#dropRunning(id);
    const keys: string[] = [];
    for await (const key of this.#storage.list(uploadPrefix(id))) keys.push(key);
    // The info object last: a session half-removed still expires.
    keys.sort((a, b) => (a.endsWith("/info") ? 1 : 0) - (b.endsWith("/info") ? 1 : 0));
    for (const key of keys) await this.#storage.delete(key);
  }
}

/** Sessions whose running hash is kept at once (each a libcrypto context, a few hundred bytes). */
const MAX_RUNNING_HASHES = 1024;

/** `body` as it is, with each chunk also fed to `hasher` (a few chunks ahead at most). */
function tap(body: ReadableStream<Uint8Array>, hasher: BlockHasher): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  const pending: Promise<void>[] = [];
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { done, value } = await reader.read();
      if (done) {
        await Promise.all(pending);
        return controller.close();
      }
      pending.push(hasher.update(value));
      if (pending.length > 4) await pending.shift();
      controller.enqueue(value);
    },
    cancel: (reason) => reader.cancel(reason),
  });
}

/** RANGE_INVALID (416, with the upload's Range) for a chunk that does not start at `offset`. */
async function checkStart(
  start: number | undefined,
  offset: number,
  body: ReadableStream<Uint8Array> | null,
): Promise<void> {
  if (start === undefined || start === offset) return;
  await body?.cancel();
  throw new RegistryError(
    "RANGE_INVALID",
    `chunk starts at ${start}, but the upload has ${offset} bytes`,
    { headers: { range: rangeHeader(offset) } },
  );
}

/** `Range` of an upload with `offset` bytes, as distribution spells it (0-0 when empty). */
export function rangeHeader(offset: number): string {
  return `0-${Math.max(offset - 1, 0)}`;
}

function json(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value));
}

function subjectOf(bytes: Uint8Array): string | undefined {
  try {
    const doc = JSON.parse(new TextDecoder().decode(bytes));
    return typeof doc?.subject?.digest === "string" ? doc.subject.digest : undefined;
  } catch {
    return undefined;
  }
}

/** Sorted, after `last`, at most `n` (n = 0: none); `next` when more remain. */
export function paginate(items: string[], options: { n?: number; last?: string }): Page {
  const sorted = [...items].sort();
  const after = options.last === undefined ? sorted : sorted.filter((item) => item > options.last!);
  if (options.n === undefined || after.length <= options.n) return { items: after };
  const page = after.slice(0, options.n);
  // n=0 asks for nothing, and gets no Link either.
  return page.length > 0 ? { items: page, next: page[page.length - 1] } : { items: page };
}

/** The chunks one after the other (each opened only when reached), then `tail`. */
function concatStreams(
  parts: (() => Promise<ReadableStream<Uint8Array>>)[],
  tail: ReadableStream<Uint8Array> | null,
): ReadableStream<Uint8Array> {
  let index = 0;
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      while (true) {
        if (!reader) {
          if (index < parts.length) reader = (await parts[index++]()).getReader();
          else if (tail && index === parts.length) {
            index++;
            reader = tail.getReader();
          } else return controller.close();
        }
        const { done, value } = await reader.read();
        if (!done) return controller.enqueue(value);
        reader = undefined;
      }
    },
    async cancel(reason) {
      await reader?.cancel(reason);
      if (tail && index <= parts.length) await tail.cancel(reason);
    },
  });
}
