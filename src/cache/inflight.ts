/**
 * Single-flight, streaming blob downloads.
 *
 * The first request for a missing blob starts ONE upstream download. Its bytes are read
 * straight into a small ring of fixed blocks (no per-chunk allocation), hashed, and written
 * block by block to a spool file. Every request for the same digest, concurrent or later,
 * follows the download at its own pace: readers near the head copy from the ring (the disk
 * write is not on their path), readers further behind read the spool with their own handle. A
 * slow client never slows the download, a fast one never waits for the whole blob, and memory
 * per download is the ring (BLOCK_SIZE x RING_BLOCKS) whatever the blob size.
 *
 * The last byte is held back from every reader until the digest is verified, so a corrupt
 * download is never delivered whole: readers are errored instead and the client's response is
 * cut short. Only verified spools are published to storage.
 */
import { Hasher, parseDigest } from "../digest.ts";
import { noteStreamed } from "../memory.ts";
import { RegistryError } from "../oci/errors.ts";
import type { ByteRange, Storage } from "../storage/storage.ts";
import { blobKey } from "../storage/layout.ts";

/** Bytes per ring block, and per spool write: large writes are what make the disk keep up. */
const BLOCK_SIZE = 1 << 20;
/** Blocks in the ring: how far the network may run ahead of the disk, plus a tail for readers. */
const RING_BLOCKS = 4;
/** Buffer for reading the network body. */
const RECEIVE_SIZE = 256 * 1024;
/** Buffer a client's stream reads into. */
const READ_CHUNK = 1 << 20;

/**
 * Starts the upstream GET for a digest; resolves once headers arrived (2xx only), or to null
 * when the blob turned out to be stored already (published by a download that just ended).
 */
export type FetchBlob = () => Promise<Response | null>;

type State = "downloading" | "verified" | "failed";

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
  /** Block `b` of the blob lives in `#ring[b % RING_BLOCKS]` while `b >= #oldestInRing`. */
  #ring: Uint8Array[] = [];
  #oldestInRing = 0;
  #writeFailure: unknown;
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
    let writing: Promise<void> = Promise.resolve();
    try {
      for await (const chunk of bodyChunks(body)) {
        if (
          this.expectedSize !== undefined && this.#received + chunk.byteLength > this.expectedSize
        ) {
          throw new RegistryError(
            "UPSTREAM_ERROR",
            `upstream sent more than ${this.expectedSize} bytes for ${this.digest}`,
          );
        }
        hasher.update(chunk);
        noteStreamed(chunk.byteLength); // the network body allocates per read as well
        let offset = 0;
        while (offset < chunk.byteLength) {
          const position = this.#received;
          const block = Math.floor(position / BLOCK_SIZE);
          const within = position % BLOCK_SIZE;
          if (within === 0) {
            // Starting a block evicts the one RING_BLOCKS back: it must be on disk first.
            while (this.#written < (block - RING_BLOCKS + 1) * BLOCK_SIZE) {
              if (this.#writeFailure !== undefined) throw this.#writeFailure;
              await this.#changed();
            }
            this.#oldestInRing = Math.max(0, block - RING_BLOCKS + 1);
          }
          const slot = this.#slot(block);
          const n = Math.min(chunk.byteLength - offset, BLOCK_SIZE - within);
          slot.set(chunk.subarray(offset, offset + n), within);
          offset += n;
          this.#received += n;
          if (within + n === BLOCK_SIZE) writing = this.#writeBlock(writing, block, BLOCK_SIZE);
        }
        this.#notify();
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
      const partial = this.#received % BLOCK_SIZE;
      if (partial > 0) {
        writing = this.#writeBlock(writing, Math.floor(this.#received / BLOCK_SIZE), partial);
      }
      await writing;
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
      await writing.catch(() => {});
      this.#spool.close();
      this.#notify();
    }
    if (this.#state === "failed") {
      this.#releaseRing();
      await Deno.remove(this.spoolPath).catch(() => {});
      throw this.#error;
    }
    this.#releaseRing(); // everything is on disk now; readers use the file
    try {
      await this.#storage.publishFile(blobKey(this.digest), this.spoolPath, {
        size: this.#received,
      });
    } catch (e) {
      log(`blob ${this.digest}: verified but could not be stored: ${(e as Error).message}`);
      await Deno.remove(this.spoolPath).catch(() => {});
    }
  }

  /** The ring slot for `block`, allocated on first use (small blobs get small slots). */
  #slot(block: number): Uint8Array {
    const index = block % RING_BLOCKS;
    if (!this.#ring[index]) {
      const left = this.expectedSize === undefined
        ? BLOCK_SIZE
        : this.expectedSize - block * BLOCK_SIZE;
      this.#ring[index] = new Uint8Array(Math.max(1, Math.min(BLOCK_SIZE, left)));
    }
    return this.#ring[index];
  }

  /** Queues the write of `length` bytes of `block` after `previous`; one write at a time. */
  #writeBlock(previous: Promise<void>, block: number, length: number): Promise<void> {
    const write = previous.then(async () => {
      const data = this.#ring[block % RING_BLOCKS].subarray(0, length);
      let offset = 0;
      while (offset < length) offset += await this.#spool.write(data.subarray(offset));
      this.#written += length;
      this.#notify();
    }).catch((e) => {
      this.#writeFailure ??= e;
      this.#notify();
      throw e;
    });
    // Awaited later (the next write, the end of the download); until then a failure must not
    // count as an unhandled rejection, which would end the process.
    write.catch(() => {});
    return write;
  }

  #releaseRing(): void {
    this.#oldestInRing = Infinity;
    this.#ring = [];
  }

  /** Copies bytes at `position` (below `limit`) from the ring into `view`; 0 when not there. */
  #copyFromRing(position: number, limit: number, view: Uint8Array): number {
    let copied = 0;
    while (copied < view.byteLength && position + copied < limit) {
      const at = position + copied;
      const block = Math.floor(at / BLOCK_SIZE);
      if (block < this.#oldestInRing) break;
      const within = at % BLOCK_SIZE;
      const n = Math.min(view.byteLength - copied, BLOCK_SIZE - within, limit - at);
      view.set(this.#ring[block % RING_BLOCKS].subarray(within, within + n), copied);
      copied += n;
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
              let n = this.#copyFromRing(position, limit, view);
              if (n === 0) {
                // Behind the ring: this part is on disk.
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
              noteStreamed(n);
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

/**
 * The chunks of a body, read with BYOB into one reused buffer when the body is a byte stream
 * (each chunk is only valid until the next is asked for), else as the body hands them out.
 */
async function* bodyChunks(body: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  let reader: ReadableStreamBYOBReader;
  try {
    reader = body.getReader({ mode: "byob" });
  } catch {
    yield* body;
    return;
  }
  let buffer = new Uint8Array(RECEIVE_SIZE);
  try {
    while (true) {
      const { done, value } = await reader.read(buffer);
      if (done) return;
      yield value;
      buffer = new Uint8Array(value.buffer); // the same memory, handed back after the read
    }
  } finally {
    reader.releaseLock();
  }
}

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

  /** The download of `digest` under way, if there is one. */
  running(digest: string): Promise<Download | null> | undefined {
    return this.#downloads.get(digest);
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
