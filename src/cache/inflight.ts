/**
 * Single-flight, streaming blob downloads.
 *
 * The first request for a missing blob starts ONE upstream download that is hashed as it
 * arrives and written to a spool file. Every request for the same digest, concurrent or later,
 * follows the download at its own pace: readers at the head copy the newest bytes straight from
 * memory (the disk write is not on their path), readers further behind read the spool file with
 * their own handle. A slow client never slows the download, a fast one never waits for the
 * whole blob, and memory per download is bounded whatever the blob size.
 *
 * The last byte is held back from every reader until the digest is verified, so a corrupt
 * download is never delivered whole: readers are errored instead and the client's response is
 * cut short. Only verified spools are published to storage.
 */
import { concatBytes } from "../bytes.ts";
import { Hasher, parseDigest } from "../digest.ts";
import { RegistryError } from "../oci/errors.ts";
import type { ByteRange, Storage } from "../storage/storage.ts";
import { blobKey } from "../storage/layout.ts";

const READ_CHUNK = 1 << 20;
/** Bytes already on disk that stay in memory too, for readers just behind the head. */
const MEMORY_TAIL = 4 << 20;

/**
 * Starts the upstream GET for a digest; resolves once headers arrived (2xx only), or to null
 * when the blob turned out to be stored already (published by a download that just ended).
 */
export type FetchBlob = () => Promise<Response | null>;

type State = "downloading" | "verified" | "failed";

/** A received chunk and where it sits in the blob. */
interface Segment {
  offset: number;
  bytes: Uint8Array;
}

export class Download {
  readonly digest: string;
  readonly spoolPath: string;
  /** Size announced by upstream (Content-Length), when it announced one. */
  readonly expectedSize: number | undefined;
  /** Settles when the blob is published (or the download failed). */
  readonly finished: Promise<void>;
  #state: State = "downloading";
  #error: unknown;
  /** Bytes received (and hashed) so far. */
  #received = 0;
  /** Bytes on disk in the spool so far. */
  #written = 0;
  /** The newest received bytes, oldest first: everything not yet on disk plus a tail. */
  #memory: Segment[] = [];
  #wake: (() => void)[] = [];
  #storage: Storage;
  #spool: Deno.FsFile;

  constructor(
    digest: string,
    spoolPath: string,
    spool: Deno.FsFile,
    response: Response,
    storage: Storage,
    log: (message: string) => void,
  ) {
    this.digest = digest;
    this.spoolPath = spoolPath;
    this.#spool = spool;
    this.#storage = storage;
    const length = response.headers.get("content-length");
    this.expectedSize = length !== null && /^\d+$/.test(length) ? Number(length) : undefined;
    this.finished = this.#run(response.body!, log);
    this.finished.catch(() => {}); // failures reach readers and are logged; never unhandled
  }

  /** Bytes of the blob readers may have now (all of them once verified). */
  get available(): number {
    return this.#state === "verified" ? this.#received : Math.max(0, this.#received - 1);
  }

  async #run(body: ReadableStream<Uint8Array>, log: (message: string) => void): Promise<void> {
    const hasher = new Hasher(parseDigest(this.digest).algorithm);
    const writer = new SpoolWriter(this.#spool, (bytes) => {
      this.#written += bytes;
      this.#trimMemory();
    });
    try {
      for await (const chunk of body) {
        if (
          this.expectedSize !== undefined && this.#received + chunk.byteLength > this.expectedSize
        ) {
          throw new RegistryError(
            "UPSTREAM_ERROR",
            `upstream sent more than ${this.expectedSize} bytes for ${this.digest}`,
          );
        }
        hasher.update(chunk);
        this.#memory.push({ offset: this.#received, bytes: chunk });
        this.#received += chunk.byteLength;
        this.#notify();
        await writer.append(chunk);
      }
      const actual = hasher.digest();
      if (actual !== this.digest) {
        throw new RegistryError(
          "UPSTREAM_ERROR",
          `upstream sent content with digest ${actual} for ${this.digest}; not cached`,
        );
      }
      if (this.expectedSize !== undefined && this.#received !== this.expectedSize) {
        throw new RegistryError(
          "UPSTREAM_ERROR",
          `upstream sent ${this.#received} of ${this.expectedSize} bytes for ${this.digest}`,
        );
      }
      this.#state = "verified";
      this.#notify();
      await writer.flush();
    } catch (e) {
      this.#state = "failed";
      this.#error = e instanceof RegistryError ? e : new RegistryError(
        "UPSTREAM_ERROR",
        `download of ${this.digest} failed: ${(e as Error)?.message ?? e}`,
        { cause: e },
      );
      log(`blob ${this.digest}: ${(this.#error as Error).message}`);
      await body.cancel().catch(() => {});
    } finally {
      await writer.flush().catch(() => {});
      this.#spool.close();
      this.#notify();
    }
    if (this.#state === "failed") {
      this.#memory = [];
      await Deno.remove(this.spoolPath).catch(() => {});
      throw this.#error;
    }
    try {
      await this.#storage.publishFile(blobKey(this.digest), this.spoolPath, {
        size: this.#received,
      });
    } catch (e) {
      log(`blob ${this.digest}: verified but could not be stored: ${(e as Error).message}`);
      await Deno.remove(this.spoolPath).catch(() => {});
    } finally {
      this.#memory = []; // all on disk now; late readers use the file
    }
  }

  /** Drops in-memory segments that are on disk and older than the tail readers may want. */
  #trimMemory(): void {
    let drop = 0;
    while (
      drop < this.#memory.length &&
      this.#memory[drop].offset + this.#memory[drop].bytes.byteLength <= this.#written &&
      this.#received - (this.#memory[drop].offset + this.#memory[drop].bytes.byteLength) >=
        MEMORY_TAIL
    ) drop++;
    if (drop > 0) this.#memory.splice(0, drop);
  }

  /** Copies bytes at `position` from memory into `view`; 0 when they are not in memory. */
  #copyFromMemory(position: number, view: Uint8Array): number {
    const memory = this.#memory;
    if (memory.length === 0 || position < memory[0].offset) return 0;
    let low = 0;
    let high = memory.length - 1;
    while (low < high) { // last segment starting at or before position
      const mid = (low + high + 1) >> 1;
      if (memory[mid].offset <= position) low = mid;
      else high = mid - 1;
    }
    let copied = 0;
    for (let i = low; i < memory.length && copied < view.byteLength; i++) {
      const { offset, bytes } = memory[i];
      const from = position + copied - offset;
      if (from >= bytes.byteLength) continue;
      const part = bytes.subarray(from, from + view.byteLength - copied);
      view.set(part, copied);
      copied += part.byteLength;
    }
    return copied;
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = [];
    for (const resolve of wake) resolve();
  }

  #changed(): Promise<void> {
    return new Promise((resolve) => this.#wake.push(resolve));
  }

  /**
   * A stream of the blob (or a range of it) that follows the download. Opens its own handle on
   * the spool right away; if the spool was already published away, reads from storage instead.
   */
  reader(range?: ByteRange): ReadableStream<Uint8Array> {
    let file: Deno.FsFile | undefined;
    try {
      file = Deno.openSync(this.spoolPath, { read: true });
    } catch {
      return this.#fromStorage(range);
    }
    const handle = file;
    let position = range?.start ?? 0;
    const end = range ? range.end + 1 : undefined; // exclusive
    let filePosition = 0;
    const close = () => {
      try {
        handle.close();
      } catch { /* already closed */ }
    };
    return new ReadableStream({
      type: "bytes",
      autoAllocateChunkSize: READ_CHUNK,
      pull: async (controller: ReadableByteStreamController) => {
        try {
          while (true) {
            if (this.#state === "failed") throw this.#error;
            const limit = Math.min(this.available, end ?? Infinity);
            if (position < limit) {
              const view = (controller.byobRequest!.view! as Uint8Array).subarray(
                0,
                limit - position,
              );
              let n = this.#copyFromMemory(position, view);
              if (n === 0) {
                // Behind the in-memory tail: this part is on disk.
                if (filePosition !== position) {
                  await handle.seek(position, Deno.SeekMode.Start);
                  filePosition = position;
                }
                n = await handle.read(view.subarray(0, this.#written - position)) ?? 0;
                if (n === 0) throw new Error("spool file ended early");
                filePosition += n;
              }
              position += n;
              controller.byobRequest!.respond(n);
              return;
            }
            if (this.#state === "verified" && position >= limit) {
              close();
              controller.close();
              controller.byobRequest?.respond(0);
              return;
            }
            await this.#changed();
          }
        } catch (e) {
          close();
          controller.error(e);
        }
      },
      cancel: close,
    });
  }

  /** For readers that arrive after the spool was published (or removed): read the result. */
  #fromStorage(range?: ByteRange): ReadableStream<Uint8Array> {
    let inner: ReadableStreamDefaultReader<Uint8Array> | undefined;
    return new ReadableStream<Uint8Array>({
      start: async () => {
        await this.finished; // a failed download rejects here, erroring this stream
        const object = await this.#storage.read(blobKey(this.digest), range);
        if (!object) {
          throw new RegistryError("BLOB_UNKNOWN", `blob ${this.digest} was not stored`);
        }
        inner = object.body.getReader();
      },
      pull: async (controller) => {
        const { done, value } = await inner!.read();
        if (done) controller.close();
        else controller.enqueue(value);
      },
      cancel: (reason) => inner?.cancel(reason),
    });
  }
}

/** Most bytes a download holds in memory while the spool write before them is under way. */
const MAX_PENDING = 8 << 20;

/**
 * Appends to the spool with at most one write in flight, coalescing the chunks that arrive
 * meanwhile into the next write: far fewer write calls than one per network chunk, while the
 * network read, the hashing and the disk write overlap.
 */
class SpoolWriter {
  readonly #file: Deno.FsFile;
  readonly #onWritten: (bytes: number) => void;
  #pending: Uint8Array[] = [];
  #pendingBytes = 0;
  #inFlight: Promise<void> | undefined;
  #error: unknown;

  constructor(file: Deno.FsFile, onWritten: (bytes: number) => void) {
    this.#file = file;
    this.#onWritten = onWritten;
  }

  async append(chunk: Uint8Array): Promise<void> {
    this.#throwIfFailed();
    this.#pending.push(chunk);
    this.#pendingBytes += chunk.byteLength;
    this.#pump();
    while (this.#pendingBytes >= MAX_PENDING && this.#inFlight) await this.#inFlight;
    this.#throwIfFailed();
  }

  /** Resolves once everything appended is on disk. */
  async flush(): Promise<void> {
    while (this.#inFlight) await this.#inFlight;
    this.#throwIfFailed();
  }

  #pump(): void {
    if (this.#inFlight || this.#pendingBytes === 0 || this.#error !== undefined) return;
    const data = this.#pending.length === 1
      ? this.#pending[0]
      : concatBytes(this.#pending, this.#pendingBytes);
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#inFlight = writeAll(this.#file, data).then(
      () => {
        this.#inFlight = undefined;
        this.#onWritten(data.byteLength);
        this.#pump();
      },
      (e) => {
        this.#inFlight = undefined;
        this.#error = e;
      },
    );
  }

  #throwIfFailed(): void {
    if (this.#error !== undefined) throw this.#error;
  }
}

async function writeAll(file: Deno.FsFile, chunk: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < chunk.byteLength) offset += await file.write(chunk.subarray(offset));
}

/** The set of downloads under way, at most one per digest. */
export class InflightDownloads {
  readonly #downloads = new Map<string, Promise<Download | null>>();
  readonly #spoolDir: string;
  readonly #storage: Storage;
  readonly #log: (message: string) => void;

  constructor(spoolDir: string, storage: Storage, log: (message: string) => void) {
    this.#spoolDir = spoolDir;
    this.#storage = storage;
    this.#log = log;
  }

  /** How many downloads are running (for metrics and tests). */
  get size(): number {
    return this.#downloads.size;
  }

  /** Resolves when every download under way has been published or has failed. */
  async settled(): Promise<void> {
    while (this.#downloads.size > 0) {
      await Promise.allSettled(
        [...this.#downloads.values()].map((d) => d.then((download) => download?.finished)),
      );
    }
  }

  /**
   * Joins the download of `digest`, starting it with `fetch` if none is running. Rejects when
   * the upstream request fails before any byte arrived.
   */
  join(digest: string, fetch: FetchBlob): Promise<Download | null> {
    const running = this.#downloads.get(digest);
    if (running) return running;
    const started = this.#start(digest, fetch);
    this.#downloads.set(digest, started);
    const forget = () => void this.#downloads.delete(digest);
    started.then(
      (download) => download ? download.finished.catch(() => {}).finally(forget) : forget(),
      forget,
    );
    return started;
  }

  async #start(digest: string, fetch: FetchBlob): Promise<Download | null> {
    const response = await fetch();
    if (!response) return null;
    await Deno.mkdir(this.#spoolDir, { recursive: true });
    const spoolPath = `${this.#spoolDir}/spool-${parseDigest(digest).hex}-${crypto.randomUUID()}`;
    let spool: Deno.FsFile;
    try {
      spool = await Deno.open(spoolPath, { write: true, createNew: true });
    } catch (e) {
      await response.body?.cancel();
      throw new RegistryError("UNAVAILABLE", `cannot create spool file: ${(e as Error).message}`);
    }
    return new Download(digest, spoolPath, spool, response, this.#storage, this.#log);
  }
}
