/**
 * S3 storage (AWS S3 or anything speaking its protocol: MinIO, Ceph RGW, s3rver). Keys are
 * stored as `${prefix}${key}`.
 *
 * Writes stream through a verifying transform into a multipart upload (lib-storage `Upload`);
 * when the digest or size does not match, the stream fails before its last part is handed over,
 * so the upload is never completed and no object ever appears at the key. Nothing is buffered
 * beyond the upload's parts in flight (partSize x queueSize).
 *
 * Every request has a connection timeout and a time limit (or, for uploads, an inactivity
 * limit), the SDK retries transient failures with backoff, and what still fails becomes
 * RegistryError UNAVAILABLE. Object bodies that break mid-way are resumed with a ranged GET.
 */
import {
  CopyObjectCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  type GetObjectCommandOutput,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import { Readable } from "node:stream";
import { RegistryError } from "../oci/errors.ts";
import { ContentCheck } from "../oci/digest.ts";
import { fileStream } from "./filesystem.ts";
import { IN_PLACE_STREAMING, type Streaming } from "../runtime/streaming.ts";
import {
  assertSafeKey,
  type ByteRange,
  checkRange,
  type ObjectBody,
  type ObjectInfo,
  type Storage,
  type WriteOptions,
} from "./storage.ts";

/** The largest object CopyObject copies in one request (S3's limit). */
const MAX_COPY_BYTES = 5 * 1024 * 1024 * 1024;

export interface S3StorageOptions {
  bucket: string;
  region: string;
  /** Custom endpoint (MinIO, Ceph, s3rver...); implies path-style addressing by default. */
  endpoint?: string;
  /** Key prefix inside the bucket; a missing trailing "/" is added. */
  prefix?: string;
  /** Static credentials; without them the standard AWS credential chain is used. */
  accessKeyId?: string;
  secretAccessKey?: string;
  sessionToken?: string;
  /** Path-style URLs (`endpoint/bucket/key`); default: true when an endpoint is given. */
  forcePathStyle?: boolean;
  /** Offer presigned GET URLs (directUrl) so clients download blobs from S3 itself. */
  redirect?: boolean;
  /** Lifetime of presigned URLs in seconds (default 300). */
  redirectExpiresIn?: number;
  /** TCP connect timeout per attempt, ms (default 2000). */
  connectTimeoutMs?: number;
  /** Time to the response headers per attempt for non-upload requests, ms (default 5000). */
  requestTimeoutMs?: number;
  /** Socket inactivity limit (uploads, bodies), ms (default 30000). */
  idleTimeoutMs?: number;
  /** Attempts per request, including the first (default 3). */
  maxAttempts?: number;
  /** Multipart part size in bytes (default 8 MiB, minimum 5 MiB). */
  partSize?: number;
  /** Parts uploaded concurrently per upload (default 3); memory per upload ~ partSize x this. */
  queueSize?: number;
  /** Told of the bytes read from local files into uploads (GC pacing; see runtime/streaming). */
  streaming?: Pick<Streaming, "streamed">;
}

const MiB = 1 << 20;
/** S3 allows 10,000 parts; keep a margin. */
const MAX_PARTS = 9_000;

export class S3Storage implements Storage {
  readonly description: string;
  readonly bucket: string;
  readonly prefix: string;
  readonly client: S3Client;
  #expiresIn: number;
  #requestTimeout: number;
  #partSize: number;
  #queueSize: number;
  readonly #streamed: Streaming["streamed"];

  constructor(options: S3StorageOptions) {
    this.bucket = options.bucket;
    this.prefix = options.prefix ? options.prefix.replace(/\/*$/, "/").replace(/^\/+/, "") : "";
    if (this.prefix !== "") assertSafeKey(this.prefix.slice(0, -1));
    if (options.redirect) this.directUrl = (key) => this.#presign(key);
    this.#expiresIn = options.redirectExpiresIn ?? 300;
    this.#requestTimeout = options.requestTimeoutMs ?? 5_000;
    this.#partSize = Math.max(options.partSize ?? 8 * MiB, 5 * MiB);
    this.#queueSize = Math.max(options.queueSize ?? 3, 1);
    this.#streamed = (options.streaming ?? IN_PLACE_STREAMING).streamed;
    const credentials = options.accessKeyId && options.secretAccessKey
      ? {
        accessKeyId: options.accessKeyId,
        secretAccessKey: options.secretAccessKey,
        sessionToken: options.sessionToken,
      }
      : undefined; // the SDK's default chain: env, shared config, web identity, IMDS...
    this.client = new S3Client({
      region: options.region,
      endpoint: options.endpoint,
      forcePathStyle: options.forcePathStyle ?? options.endpoint !== undefined,
      credentials,
      // The default (checksums on every request) stores streamed bodies WITH their aws-chunked
      // framing on some S3 implementations: silent corruption. We verify digests ourselves.
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
      maxAttempts: options.maxAttempts ?? 3,
      requestHandler: {
        connectionTimeout: options.connectTimeoutMs ?? 2_000,
        socketTimeout: options.idleTimeoutMs ?? 30_000,
        // requestTimeout is set per request (not for uploads, whose time grows with the part).
        throwOnRequestTimeout: true,
      },
    });
    this.description = `s3 ${options.endpoint ? options.endpoint + " " : ""}bucket ${this.bucket}` +
      (this.prefix ? ` prefix ${this.prefix}` : "");
  }

  /** Checks that the bucket is reachable; throws UNAVAILABLE with the reason otherwise. */
  async init(): Promise<void> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }), this.#opts());
    } catch (e) {
      throw unavailable(e, `HeadBucket ${this.bucket}`);
    }
  }

  #key(key: string): string {
    assertSafeKey(key);
    return this.prefix + key;
  }

  #opts() {
    return { requestTimeout: this.#requestTimeout };
  }

  async stat(key: string): Promise<ObjectInfo | null> {
    const k = this.#key(key);
    try {
      const out = await this.client.send(
        new HeadObjectCommand({ Bucket: this.bucket, Key: k }),
        this.#opts(),
      );
      return { size: out.ContentLength ?? 0, modified: out.LastModified ?? new Date(0) };
    } catch (e) {
      if (isNotFound(e)) return null;
      throw unavailable(e, `HeadObject ${k}`);
    }
  }

  async read(key: string, range?: ByteRange): Promise<ObjectBody | null> {
    const k = this.#key(key);
    if (
      range &&
      !(Number.isSafeInteger(range.start) && Number.isSafeInteger(range.end) &&
        range.start >= 0 && range.start <= range.end)
    ) {
      const info = await this.stat(key);
      if (!info) return null;
      checkRange(range, info.size); // throws
    }
    const out = await this.#get(k, range?.start ?? 0, range?.end);
    if (out === null) return null;
    if (out === "range") {
      const info = await this.stat(key);
      if (!info) return null;
      checkRange(range!, info.size); // throws, unless the object changed in between
      throw new RegistryError("RANGE_INVALID", `range not satisfiable for ${key}`, {
        headers: { "Content-Range": `bytes */${info.size}` },
      });
    }
    const length = out.ContentLength ?? 0;
    let size = length;
    let start = 0;
    const served = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(out.ContentRange ?? "");
    if (served) {
      start = Number(served[1]);
      size = Number(served[3]);
    }
    const body = out.Body!.transformToWebStream() as ReadableStream<Uint8Array>;
    let from = start;
    let to = start + length;
    if (range) {
      try {
        // s3rver answers "bytes=0-0" of an empty object with 206 instead of 416.
        checkRange(range, size);
        if (start > range.start) {
          throw new RegistryError(
            "UNAVAILABLE",
            `S3 GetObject ${k}: asked for bytes from ${range.start}, got from ${start}`,
          );
        }
      } catch (e) {
        await body.cancel().catch(() => {});
        throw e;
      }
      // Trim what a server sent beyond the request: s3rver reads "bytes=N-0" as "bytes=N-",
      // and a server may ignore Range altogether (200 with the whole object).
      from = range.start;
      to = Math.min(to, range.end + 1);
    }
    return {
      size,
      modified: out.LastModified ?? new Date(0),
      body: this.#resumable(k, body, start, from, to, out.ETag),
    };
  }

  /** GetObject, with null for an absent key and "range" for an unsatisfiable range. */
  async #get(
    k: string,
    start: number,
    end?: number,
    etag?: string,
  ): Promise<GetObjectCommandOutput | null | "range"> {
    try {
      return await this.client.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: k,
          Range: start > 0 || end !== undefined ? `bytes=${start}-${end ?? ""}` : undefined,
          IfMatch: etag,
        }),
        this.#opts(),
      );
    } catch (e) {
      if (isNotFound(e)) return null;
      if (status(e) === 416 || errorName(e) === "InvalidRange") return "range";
      throw unavailable(e, `GetObject ${k}`);
    }
  }

  /**
   * Streams bytes [from, to) of the object out of `body`, which starts at byte `start`. When
   * the body breaks before the end (connection reset, inactivity timeout while the consumer
   * paused), continues where it stopped with a ranged GET of the same version (If-Match).
   */
  #resumable(
    k: string,
    first: ReadableStream<Uint8Array>,
    start: number,
    from: number,
    to: number,
    etag: string | undefined,
  ): ReadableStream<Uint8Array> {
    let reader = first.getReader();
    let position = start; // the object offset of the next byte `reader` yields
    let next = from; // the next byte the consumer has not been given
    let failures = 0;
    return new ReadableStream<Uint8Array>({
      start: async (controller) => {
        if (next >= to) {
          await reader.cancel().catch(() => {});
          controller.close();
        }
      },
      pull: async (controller) => {
        for (;;) {
          let problem: unknown;
          try {
            const { done, value } = await reader.read();
            if (!done) {
              const chunkStart = position;
              position += value.byteLength;
              // Only bytes not yet delivered: a resumed response may start earlier than asked
              // (a server that ignores Range answers 200 from byte 0).
              const first = Math.max(next, chunkStart);
              const end = Math.min(to, position);
              if (end <= first) continue;
              controller.enqueue(value.subarray(first - chunkStart, end - chunkStart));
              next = end;
              failures = 0; // progress made
              if (next >= to) {
                await reader.cancel().catch(() => {});
                controller.close();
              }
              return;
            }
            if (next >= to) {
              controller.close();
              return;
            }
            problem = new Error(`body ended at byte ${position} of ${to}`);
          } catch (e) {
            problem = e;
          }
          if (++failures > 3 || etag === undefined) {
            controller.error(unavailable(problem, `GetObject ${k} (body)`));
            return;
          }
          reader.cancel().catch(() => {});
          await new Promise((resolve) => setTimeout(resolve, 100 * 2 ** failures));
          try {
            const out = await this.#get(k, next, to - 1, etag);
            if (out === null || out === "range") throw new Error("object vanished");
            const served = /^bytes (\d+)-/.exec(out.ContentRange ?? "");
            position = served ? Number(served[1]) : 0;
            reader = (out.Body!.transformToWebStream() as ReadableStream<Uint8Array>).getReader();
          } catch (e) {
            controller.error(unavailable(e, `GetObject ${k} (resume at ${next})`));
            return;
          }
        }
      },
      cancel: (reason) => reader.cancel(reason),
    }, { highWaterMark: 0 });
  }

  async readBytes(key: string): Promise<Uint8Array | null> {
    const k = this.#key(key);
    const out = await this.#get(k, 0);
    if (out === null || out === "range") return null;
    try {
      return await out.Body!.transformToByteArray();
    } catch (e) {
      throw unavailable(e, `GetObject ${k} (body)`);
    }
  }

  async write(
    key: string,
    data: Uint8Array | ReadableStream<Uint8Array>,
    options: WriteOptions = {},
  ): Promise<void> {
    const k = this.#key(key);
    if (data instanceof Uint8Array) {
      const check = new ContentCheck(options);
      check.update(data);
      check.finish();
      try {
        await this.client.send(
          new PutObjectCommand({
            Bucket: this.bucket,
            Key: k,
            Body: data,
            ContentLength: data.byteLength,
          }),
        );
      } catch (e) {
        throw writeFailed(e, `PutObject ${k}`);
      }
      return;
    }
    await this.#upload(k, data, options);
  }

  async publishFile(key: string, path: string, options: WriteOptions = {}): Promise<void> {
    const k = this.#key(key);
    const file = await Deno.open(path, { read: true });
    let size: number;
    try {
      size = (await file.stat()).size;
      new ContentCheck({ size: options.size }).finishWithSize(size, path);
    } catch (e) {
      file.close();
      throw e;
    }
    // fileStream closes the file at its end, on cancel and on error.
    await this.#upload(k, fileStream(file, size, this.#streamed), {
      ...options,
      size: options.size ?? size,
    });
    // Same effect as the filesystem back-end's rename: the file is consumed.
    await Deno.remove(path).catch(() => {});
  }

  /** Streams `data` into a (multipart) upload that completes only when the content checks out. */
  async #upload(k: string, data: ReadableStream<Uint8Array>, options: WriteOptions): Promise<void> {
    const check = new ContentCheck(options);
    const reader = data.getReader();
    // What failed on our side of the upload: the source stream, or the digest/size check.
    let failure: { error: unknown } | undefined;
    const verified = new ReadableStream<Uint8Array>({
      async pull(controller) {
        let result: ReadableStreamReadResult<Uint8Array>;
        try {
          result = await reader.read();
        } catch (e) {
          failure = { error: e };
          throw e;
        }
        try {
          if (result.done) {
            check.finish();
            controller.close();
            return;
          }
          check.update(result.value);
        } catch (e) {
          failure = { error: e };
          reader.cancel(e).catch(() => {});
          throw e;
        }
        controller.enqueue(result.value);
      },
      cancel: (reason) => reader.cancel(reason),
    });
    // Under Deno the SDK's Node HTTP handler needs a Node stream, not a Web stream.
    // deno-lint-ignore no-explicit-any
    const body = Readable.fromWeb(verified as any);
    const partSize = options.size !== undefined
      ? Math.max(this.#partSize, Math.ceil(options.size / MAX_PARTS))
      : this.#partSize;
    const upload = new Upload({
      client: this.client,
      params: { Bucket: this.bucket, Key: k, Body: body },
      partSize,
      queueSize: this.#queueSize,
      leavePartsOnError: false,
    });
    try {
      await upload.done();
    } catch (e) {
      body.destroy(); // cancels the source when S3 failed first
      // Our own failure (a mismatch, the source's error) wins over whatever the abort of the
      // multipart upload said: s3rver, for one, rejects AbortMultipartUpload.
      if (failure) throw failure.error;
      throw writeFailed(e, `upload ${k}`);
    }
  }

  async move(from: string, to: string): Promise<void> {
    const source = this.#key(from);
    const target = this.#key(to);
    const info = await this.stat(from);
    if (!info) throw new RegistryError("UNAVAILABLE", `move ${from}: no such object`);
    if (info.size > MAX_COPY_BYTES) {
      // CopyObject takes at most 5 GiB: stream the bytes through instead.
      const object = (await this.read(from))!;
      await this.write(to, object.body, { size: info.size });
    } else {
      try {
        await this.client.send(
          new CopyObjectCommand({
            Bucket: this.bucket,
            Key: target,
            CopySource: `${this.bucket}/${source.split("/").map(encodeURIComponent).join("/")}`,
          }),
          this.#opts(),
        );
      } catch (e) {
        throw writeFailed(e, `CopyObject ${source} to ${target}`);
      }
    }
    await this.delete(from);
  }

  async delete(key: string): Promise<void> {
    const k = this.#key(key);
    try {
      await this.client.send(
        new DeleteObjectCommand({ Bucket: this.bucket, Key: k }),
        this.#opts(),
      );
    } catch (e) {
      if (isNotFound(e)) return;
      throw unavailable(e, `DeleteObject ${k}`);
    }
  }

  async *list(prefix: string): AsyncIterable<string> {
    const slash = prefix.lastIndexOf("/");
    if (slash >= 0) assertSafeKey(prefix.slice(0, slash)); // "" (a leading "/") is unsafe too
    const full = this.prefix + prefix;
    let token: string | undefined;
    do {
      let out;
      try {
        out = await this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: full, ContinuationToken: token }),
          this.#opts(),
        );
      } catch (e) {
        throw unavailable(e, `ListObjectsV2 ${full}`);
      }
      for (const object of out.Contents ?? []) {
        if (object.Key?.startsWith(full)) yield object.Key.slice(this.prefix.length);
      }
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
    } while (token);
  }

  /** A presigned GET URL for `key`; present only with `redirect` (see Storage.directUrl). */
  readonly directUrl?: (key: string) => Promise<string>;

  #presign(key: string): Promise<string> {
    return getSignedUrl(
      this.client,
      new GetObjectCommand({ Bucket: this.bucket, Key: this.#key(key) }),
      {
        expiresIn: this.#expiresIn,
      },
    );
  }

  close(): Promise<void> {
    this.client.destroy(); // the SDK keeps sockets alive otherwise
    return Promise.resolve();
  }
}

function status(e: unknown): number | undefined {
  return (e as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
}

function errorName(e: unknown): string | undefined {
  return e instanceof Error ? e.name : undefined;
}

function isNotFound(e: unknown): boolean {
  const name = errorName(e);
  return name === "NoSuchKey" || name === "NotFound" ||
    (status(e) === 404 && name !== "NoSuchBucket");
}

/** Wraps whatever the SDK threw (after its retries) as UNAVAILABLE, keeping the cause. */
function unavailable(e: unknown, what: string): RegistryError {
  if (e instanceof RegistryError) return e;
  return new RegistryError("UNAVAILABLE", describe(e, what), { cause: e });
}

/**
 * Error names S3 and S3-compatible services give a write they cannot store: out of space or over
 * a quota (AWS, MinIO, Ceph RGW), or refusing writes for now.
 */
const CANNOT_STORE = new Set([
  "InsufficientStorage",
  "QuotaExceeded",
  "XMinioStorageFull",
  "XMinioAdminBucketQuotaExceeded",
  "SlowDown",
  "ServiceUnavailable",
]);

/**
 * The one place a failed write is classified: a store that cannot take it now (507, a quota,
 * 503 or SlowDown after the SDK's retries) is INSUFFICIENT_STORAGE, as a full disk is for the
 * filesystem; anything else is UNAVAILABLE.
 */
function writeFailed(e: unknown, what: string): RegistryError {
  if (e instanceof RegistryError) return e;
  const httpStatus = status(e);
  const code = (e as { Code?: string; code?: string })?.Code ?? (e as { code?: string })?.code;
  if (
    httpStatus === 507 || httpStatus === 503 || CANNOT_STORE.has(errorName(e) ?? "") ||
    CANNOT_STORE.has(code ?? "")
  ) {
    return new RegistryError("INSUFFICIENT_STORAGE", describe(e, what), { cause: e });
  }
  return unavailable(e, what);
}

function describe(e: unknown, what: string): string {
  const code = (e as { code?: string })?.code;
  const httpStatus = status(e);
  const detail = [
    errorName(e),
    code && code !== errorName(e) ? code : undefined,
    httpStatus ? `HTTP ${httpStatus}` : undefined,
  ].filter(Boolean).join(", ");
  const message = e instanceof Error ? e.message : String(e);
  return `S3 ${what} failed (${detail}): ${message}`;
}
