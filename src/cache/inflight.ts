/**
 * Single-flight, streaming blob downloads.
 *
 * The first request for a missing blob starts ONE upstream download. The network body is read
 * straight into fresh 1 MiB blocks; each finished block is hashed, written to a spool file and
 * handed, as it is, to every reader near the head of the download: no byte is copied in
 * JavaScript, however many clients follow. Every request for the same digest, concurrent or
 * later, follows the download at its own pace: readers near the head get the blocks still in
 * memory (the last BLOCKS_IN_MEMORY), readers further behind read the spool with their own
 * handle. A slow client never slows the download, a fast one never waits for the whole blob,
 * and memory per download is a few blocks whatever the blob size.
 *
 * The last byte each reader wants (the blob's last, or its range's last) is held back until
 * the digest of the whole blob is verified, so a corrupt download is never delivered whole:
 * readers are errored instead and the client's response is cut short. Only verified spools are
 * published to storage.
 */
import { createBlockHasher } from "../background_hash.ts";
import { parseDigest } from "../digest.ts";
import { noteStreamed } from "../memory.ts";
import { RegistryError } from "../oci/errors.ts";
import type { ByteRange, Storage } from "../storage/storage.ts";
import { blobKey } from "../storage/layout.ts";

/** Bytes per block: the unit of network reads, hashing, spool writes and hand-outs to readers. */
const BLOCK_SIZE = 1 << 20;
/** Finished blocks kept in memory: how far the network may run ahead of the disk. */
const BLOCKS_IN_MEMORY = 3;
/**
 * A slow upstream fills a block slowly; readers at the head should not wait for all of it. After
 * this long without a finished block, what arrived so far is copied out for them.
 */
const PARTIAL_AFTER_MS = 20;
/** Largest read of the spool for a reader behind the blocks in memory. */
const READ_CHUNK = 1 << 20;

/**
 * Starts the upstream GET for a digest; resolves once headers arrived (2xx only), or to null
 * when the blob turned out to be stored already (published by a download that just ended).
 */
export type FetchBlob = () => Promise<Response | null>;

type State = "downloading" | "verified" | "failed";

/** Bytes of the blob from `start`, in memory; never modified once made visible to readers. */
interface Piece {
  start: number;
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
  /** Bytes received so far. */
  #received = 0;
  /** Bytes on disk in the spool so far. */
  #written = 0;
  /**
   * The in-memory tail of the blob readers may take from: whole finished blocks, then copies
   * of what a slowly arriving block holds so far. Contiguous, in order.
   */
  #pieces: Piece[] = [];
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

  async #run(body: ReadableStream<Uint8Array>, log: (message: string) => void): Promise<void> {
    const hasher = createBlockHasher(parseDigest(this.digest).algorithm);
    const hashing: Promise<void>[] = []; // per block still in memory
    const source = new BlockSource(body);
    let writing: Promise<void> = Promise.resolve();
    try {
      for (let block = 0;; block++) {
        // A new block evicts the one BLOCKS_IN_MEMORY back from memory: it must be on disk (and
        // hashed) first. That bounds the memory of a download whatever the disk and CPU do.
        const keepFrom = (block - BLOCKS_IN_MEMORY + 1) * BLOCK_SIZE;
        while (this.#written < keepFrom) {
          if (this.#writeFailure !== undefined) throw this.#writeFailure;
          await this.#changed();
        }
        if (hashing.length >= BLOCKS_IN_MEMORY) await hashing.shift();
        while (this.#pieces.length > 0 && this.#pieces[0].start < keepFrom) this.#pieces.shift();

        const start = block * BLOCK_SIZE;
        const bytes = await this.#receiveBlock(source, start);
        if (bytes.byteLength > 0) {
          hashing.push(hasher.update(bytes));
          // The block replaces the partial copies made of it while it arrived.
          while (this.#pieces.length > 0 && this.#pieces.at(-1)!.start >= start) {
            this.#pieces.pop();
          }
          this.#pieces.push({ start, bytes });
          writing = this.#writeBlock(writing, bytes);
        }
        if (bytes.byteLength < BLOCK_SIZE) break; // the body ended
      }
      const actual = await hasher.digest();
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
      await writing;
    } catch (e) {
      this.#state = "failed";
      this.#error = e instanceof RegistryError ? e : new RegistryError(
        "UPSTREAM_ERROR",
        `download of ${this.digest} failed: ${(e as Error)?.message ?? e}`,
        { cause: e },
      );
      log(`blob ${this.digest}: ${(this.#error as Error).message}`);
      hasher.dispose();
      await source.cancel();
    } finally {
      await writing.catch(() => {});
      this.#spool.close();
      this.#notify();
    }
    this.#pieces = []; // everything is on disk now (or failed); readers use the file
    if (this.#state === "failed") {
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
    }
  }

  /**
   * Receives the block starting at `start`: BLOCK_SIZE bytes, fewer only where the body ended.
   * While it arrives slowly, copies of what came so far are made visible every
   * PARTIAL_AFTER_MS, so a reader at the head never waits long for the rest of the block.
   */
  async #receiveBlock(source: BlockSource, start: number): Promise<Uint8Array> {
    const size = this.expectedSize === undefined || this.expectedSize >= start + BLOCK_SIZE
      ? BLOCK_SIZE
      : Math.max(0, this.expectedSize - start);
    let block: Uint8Array = new Uint8Array(size);
    let filled = 0;
    let shown = 0; // bytes of this block already copied into pieces
    let shownAt = performance.now();
    while (filled < size) {
      const got = await source.read(block, filled);
      block = got.block;
      if (got.n === 0) break;
      filled += got.n;
      this.#received += got.n;
      noteStreamed(got.n);
      const now = performance.now();
      if (filled < size && now - shownAt >= PARTIAL_AFTER_MS) {
        this.#pieces.push({ start: start + shown, bytes: block.slice(shown, filled) });
        shown = filled;
        shownAt = now;
      }
      this.#notify();
    }
    if (filled === size && this.expectedSize !== undefined && size < BLOCK_SIZE) {
      // The announced end: anything more is a lying upstream.
      if (await source.hasMore()) {
        throw new RegistryError(
          "UPSTREAM_ERROR",
          `upstream sent more than ${this.expectedSize} bytes for ${this.digest}`,
        );
      }
    }
    return block.subarray(0, filled);
  }

  /** Queues the spool write of a finished block after `previous`; one write at a time. */
  #writeBlock(previous: Promise<void>, bytes: Uint8Array): Promise<void> {
    const write = previous.then(async () => {
      let offset = 0;
      while (offset < bytes.byteLength) offset += await this.#spool.write(bytes.subarray(offset));
      this.#written += bytes.byteLength;
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

  /** Bytes at `position` (below `limit`) from memory, without copying; null when not there. */
  #fromMemory(position: number, limit: number): Uint8Array | null {
    for (const piece of this.#pieces) {
      const end = piece.start + piece.bytes.byteLength;
      if (position >= piece.start && position < end) {
        return piece.bytes.subarray(position - piece.start, Math.min(end, limit) - piece.start);
      }
    }
    return null;
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
    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        try {
          while (true) {
            if (this.#state === "failed") throw this.#error;
            // The last byte a reader wants (of the blob, or of its range) waits for the
            // digest: no response completes with bytes that turn out to be wrong.
            const wanted = Math.min(this.#received, end ?? Infinity);
            const limit = this.#state === "verified" ? wanted : wanted - 1;
            if (position < limit) {
              let chunk = this.#fromMemory(position, limit);
              if (!chunk && position < this.#written) {
                // Behind the blocks in memory: this part is on disk.
                if (filePosition !== position) {
                  await handle.seek(position, Deno.SeekMode.Start);
                  filePosition = position;
                }
                const buffer = new Uint8Array(
                  Math.min(READ_CHUNK, this.#written - position, limit - position),
                );
                const n = await handle.read(buffer) ?? 0;
                if (n === 0) throw new Error("spool file ended early");
                filePosition += n;
                chunk = buffer.subarray(0, n);
                noteStreamed(n); // blocks from memory were counted when they were received
              }
              if (chunk) {
                position += chunk.byteLength;
                controller.enqueue(chunk);
                return;
              }
            } else if (this.#state === "verified") {
              close();
              controller.close();
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
 * Reads a body into the caller's blocks. A byte stream (fetch bodies are) reads straight into
 * the block, no copy; any other stream's chunks are copied in.
 */
class BlockSource {
  #byob?: ReadableStreamBYOBReader;
  #default?: ReadableStreamDefaultReader<Uint8Array>;
  /** Bytes of a default-stream chunk that did not fit the last block. */
  #left: Uint8Array = new Uint8Array(0);

  constructor(body: ReadableStream<Uint8Array>) {
    try {
      this.#byob = body.getReader({ mode: "byob" });
    } catch {
      this.#default = body.getReader();
    }
  }

  /**
   * Reads into `block` from `offset`. Returns the block (a BYOB read hands its memory back in
   * a new view) and the bytes read, 0 at the end of the body.
   */
  async read(block: Uint8Array, offset: number): Promise<{ block: Uint8Array; n: number }> {
    if (this.#byob) {
      const length = block.byteLength; // the read detaches `block`
      const { done, value } = await this.#byob.read(block.subarray(offset));
      if (!value) throw new Error("body was cancelled");
      const back = new Uint8Array(value.buffer, 0, length);
      return { block: back, n: done ? 0 : value.byteLength };
    }
    if (this.#left.byteLength === 0) {
      const { done, value } = await this.#default!.read();
      if (done) return { block, n: 0 };
      this.#left = value;
    }
    const n = Math.min(this.#left.byteLength, block.byteLength - offset);
    block.set(this.#left.subarray(0, n), offset);
    this.#left = this.#left.subarray(n);
    return { block, n };
  }

  /** Whether the body has any byte left (read at its announced end). */
  async hasMore(): Promise<boolean> {
    const probe = await this.read(new Uint8Array(1), 0);
    return probe.n > 0;
  }

  async cancel(): Promise<void> {
    await (this.#byob ?? this.#default)!.cancel().catch(() => {});
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
