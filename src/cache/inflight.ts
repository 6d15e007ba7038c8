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
 *
 * When the disk is full the download goes on as a pass-through: still one download for every
 * reader, still verified, nothing published. With no disk behind the blocks in memory, a block
 * is evicted only once every live reader that still needs it has read it (the slowest reader
 * paces the download instead of the disk), and once byte 0 is gone the download stops taking
 * new readers: later requests start a fresh download. A reader that holds the download up for
 * longer than `stalledReaderMs` (a client that stopped reading) is cut off, so one stalled
 * client cannot stop everyone else's pull.
 */
import type { LogFn } from "../log.ts";
import { createBlockHasher } from "../background_hash.ts";
import { parseDigest } from "../digest.ts";
import { noteStreamed } from "../memory.ts";
import { isStorageFull, RegistryError } from "../oci/errors.ts";
import type { ByteRange, Storage } from "../storage/storage.ts";
import { blobKey } from "../storage/layout.ts";
import { BlockSource } from "./block_source.ts";
import { Spool } from "./spool.ts";
import type { StoreHealth } from "./store_health.ts";

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
 * With `from`, asks for the bytes from that offset on (`Range: bytes=from-`): a body cut
 * mid-way is resumed, not started over.
 */
export type FetchBlob = (from?: number) => Promise<Response | null>;

/** Resumptions of one download's body before its failure is final. */
const MAX_RESUMES = 3;

type State = "downloading" | "verified" | "failed";

/** Bytes of the blob from `start`, in memory; never modified once made visible to readers. */
interface Piece {
  start: number;
  bytes: Uint8Array;
}

/** Where a live reader is: the next byte it will take, and the end (exclusive) it wants. */
interface ReaderPosition {
  position: number;
  end: number;
  /** Its last byte, kept when the block holding it had to leave memory before verification. */
  last?: Uint8Array;
  /** Ends its stream with `reason` (a stalled reader during a pass-through). */
  drop(reason: unknown): void;
}

/** What every download of one mirror shares. */
export interface DownloadContext {
  storage: Storage;
  health: StoreHealth;
  log: LogFn;
  /** How long a pass-through waits for a reader that does not read before cutting it off. */
  stalledReaderMs: number;
  /** Told of every blob published (the cache size bound counts it). */
  onPublished?: (digest: string, size: number) => void;
}

export class Download {
  readonly digest: string;
  /** Size announced by upstream (Content-Length), when it announced one. */
  readonly expectedSize: number | undefined;
  /** Settles when the blob is published (or passed through, or the download failed). */
  readonly finished: Promise<void>;
  /** Resolves when the download takes no new readers (see `reader`): forget it then. */
  readonly detached: Promise<void>;
  #detach!: () => void;
  #isDetached = false;
  #state: State = "downloading";
  #error: unknown;
  /** Bytes received so far. */
  #received = 0;
  /**
   * The in-memory tail of the blob readers may take from: whole finished blocks, then copies
   * of what a slowly arriving block holds so far. Contiguous, in order, from `#memoryFrom`.
   */
  #pieces: Piece[] = [];
  #memoryFrom = 0;
  #readers = new Set<ReaderPosition>();
  #wake: (() => void)[] = [];
  #storage: Storage;
  #spool: Spool;
  #health: StoreHealth;
  #stalledReaderMs: number;
  #onPublished: DownloadContext["onPublished"];
  #fetch: FetchBlob | undefined;
  #namespace: string;
  #source!: BlockSource;
  #resumes = 0;
  #log: LogFn;

  constructor(
    digest: string,
    spool: Spool,
    response: Response,
    context: DownloadContext,
    fetch?: FetchBlob,
    /** The namespace of the request that started it (for the "uncached" metric only). */
    namespace = "",
  ) {
    this.digest = digest;
    this.#spool = spool;
    spool.onChange = () => this.notify();
    this.#storage = context.storage;
    this.#health = context.health;
    this.#stalledReaderMs = context.stalledReaderMs;
    this.#onPublished = context.onPublished;
    this.#fetch = fetch;
    this.#namespace = namespace;
    const log = context.log;
    this.#log = log;
    const length = response.headers.get("content-length");
    this.expectedSize = length !== null && /^\d+$/.test(length) ? Number(length) : undefined;
    this.detached = new Promise((resolve) => this.#detach = resolve);
    this.finished = this.#run(response.body!, log);
    this.finished.catch(() => {}); // failures reach readers and are logged; never unhandled
  }

  /** Tells the spool's progress and the readers' moves to whoever waits (download, readers). */
  notify(): void {
    const wake = this.#wake;
    this.#wake = [];
    for (const resolve of wake) resolve();
  }

  async #run(body: ReadableStream<Uint8Array>, log: LogFn): Promise<void> {
    const hasher = createBlockHasher(parseDigest(this.digest).algorithm);
    const hashing: Promise<void>[] = []; // per block still in memory
    this.#source = new BlockSource(body);
    try {
      for (let block = 0;; block++) {
        // A new block evicts the one BLOCKS_IN_MEMORY back from memory: it must be on disk (and
        // hashed) first, or, with the disk full, read by every reader that needs it. That
        // bounds the memory of a download whatever the disk, the CPU and the readers do.
        const keepFrom = (block - BLOCKS_IN_MEMORY + 1) * BLOCK_SIZE;
        const waitingSince = performance.now();
        while (!this.#readyToEvict(keepFrom)) {
          if (this.#spool.failure !== undefined) throw this.#spool.failure;
          if (!this.#spool.full) {
            await this.#changed();
            continue;
          }
          const left = this.#stalledReaderMs - (performance.now() - waitingSince);
          if (left <= 0) this.#dropReadersHolding(keepFrom, log);
          else await this.#changedWithin(left);
        }
        if (hashing.length >= BLOCKS_IN_MEMORY) await hashing.shift();
        while (this.#pieces.length > 0 && this.#pieces[0].start < keepFrom) this.#pieces.shift();
        if (keepFrom > this.#memoryFrom) {
          this.#memoryFrom = keepFrom;
          // Byte 0 is neither in memory nor on disk any more: a new reader could not be served.
          if (this.#memoryFrom > this.#spool.written) this.#markDetached();
        }

        const start = block * BLOCK_SIZE;
        const bytes = await this.#receiveBlock(start);
        if (bytes.byteLength > 0) {
          hashing.push(hasher.update(bytes));
          // The block replaces the partial copies made of it while it arrived.
          while (this.#pieces.length > 0 && this.#pieces.at(-1)!.start >= start) {
            this.#pieces.pop();
          }
          this.#pieces.push({ start, bytes });
          this.#spool.append(bytes);
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
      this.notify();
      await this.#spool.settled();
      if (this.#spool.failure !== undefined) throw this.#spool.failure;
    } catch (e) {
      if (this.#state !== "verified") {
        this.#state = "failed";
        this.#error = e instanceof RegistryError ? e : new RegistryError(
          "UPSTREAM_ERROR",
          `download of ${this.digest} failed: ${(e as Error)?.message ?? e}`,
          { cause: e },
        );
        log(`blob ${this.digest}: ${(this.#error as Error).message}`, "warn");
        hasher.dispose();
        await this.#source.cancel();
      } else {
        log(`blob ${this.digest}: verified but the spool failed: ${(e as Error).message}`, "warn");
      }
    } finally {
      await this.#spool.settled();
      this.#spool.close();
      this.notify();
    }
    if (this.#state === "failed") {
      this.#markDetached();
      await this.#spool.remove();
      throw this.#error;
    }
    if (this.#spool.full || this.#spool.failure !== undefined) {
      // Passed through: readers still take the blocks in memory and the spool they opened.
      this.#markDetached();
      await this.#spool.remove();
      if (this.#spool.full) {
        this.#health.refused(
          `blob ${this.digest} passed through uncached`,
          this.#spool.full,
          { kind: "blob", namespace: this.#namespace },
        );
      }
      return;
    }
    this.#pieces = []; // everything is on disk now; readers use the file
    try {
      await this.#storage.publishFile(blobKey(this.digest), this.#spool.path!, {
        size: this.#received,
      });
      this.#health.stored();
      this.#onPublished?.(this.digest, this.#received);
    } catch (e) {
      this.#markDetached();
      await this.#spool.remove();
      if (isStorageFull(e)) {
        this.#health.refused(
          `blob ${this.digest} verified but not stored`,
          e as RegistryError,
          { kind: "blob", namespace: this.#namespace },
        );
      } else {
        log(
          `blob ${this.digest}: verified but could not be stored: ${(e as Error).message}`,
          "warn",
        );
      }
    }
  }

  /** Whether the bytes below `keepFrom` may leave memory. */
  #readyToEvict(keepFrom: number): boolean {
    const written = this.#spool.written;
    if (keepFrom <= written) return true;
    if (!this.#spool.full) return false; // on disk soon: wait for it
    // Pass-through: no live reader may still need bytes in [written, keepFrom).
    for (const reader of this.#readers) {
      if (this.#holds(reader, keepFrom, written)) return false;
    }
    return true;
  }

  /** Whether `reader` still needs bytes in [written, keepFrom), which only memory holds. */
  #holds(reader: ReaderPosition, keepFrom: number, written: number): boolean {
    const from = Math.max(reader.position, written);
    const to = Math.min(reader.end, keepFrom);
    if (from >= to) return false;
    if (from === reader.end - 1 && !reader.last) {
      // All it lacks is the last byte it wants, held back until the blob verifies: waiting
      // for it would wait forever. One byte is kept for it instead.
      const byte = this.#fromMemory(from, from + 1);
      if (byte) {
        reader.last = byte.slice();
        return false;
      }
    }
    return !(from === reader.end - 1 && reader.last);
  }

  /** Cuts off the readers a pass-through has waited on for too long (clients not reading). */
  #dropReadersHolding(keepFrom: number, log: LogFn): void {
    const written = this.#spool.written;
    const stalled = [...this.#readers].filter((r) => this.#holds(r, keepFrom, written));
    log(
      `store full: blob ${this.digest}: ${stalled.length} client(s) read nothing for ${
        this.#stalledReaderMs / 1000
      } s; cut off so the other readers of the pass-through go on`,
      "warn",
    );
    const reason = new RegistryError(
      "UNAVAILABLE",
      `blob ${this.digest}: this client stopped reading a download shared with others`,
    );
    for (const reader of stalled) reader.drop(reason);
  }

  #markDetached(): void {
    if (this.#isDetached) return;
    this.#isDetached = true;
    this.#detach();
  }

  /**
   * Receives the block starting at `start`: BLOCK_SIZE bytes, fewer only where the body ended.
   * While it arrives slowly, copies of what came so far are made visible every
   * PARTIAL_AFTER_MS, so a reader at the head never waits long for the rest of the block.
   */
  async #receiveBlock(start: number): Promise<Uint8Array> {
    const size = this.expectedSize === undefined || this.expectedSize >= start + BLOCK_SIZE
      ? BLOCK_SIZE
      : Math.max(0, this.expectedSize - start);
    let block: Uint8Array = new Uint8Array(size);
    let filled = 0;
    let shown = 0; // bytes of this block already copied into pieces
    let shownAt = performance.now();
    while (filled < size) {
      let got;
      try {
        got = await this.#source.read(block, filled);
      } catch (e) {
        // The body broke. A read that fails may take its block's memory with it (BYOB), so the
        // block starts over: from its first byte, asked for with a Range request.
        if (!await this.#resume(start, e)) throw e;
        this.#received = start;
        block = new Uint8Array(size);
        filled = shown = 0;
        continue;
      }
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
      this.notify();
    }
    if (filled === size && this.expectedSize !== undefined && size < BLOCK_SIZE) {
      // The announced end: anything more is a lying upstream.
      if (await this.#source.hasMore()) {
        throw new RegistryError(
          "UPSTREAM_ERROR",
          `upstream sent more than ${this.expectedSize} bytes for ${this.digest}`,
        );
      }
    }
    return block.subarray(0, filled);
  }

  /**
   * Replaces a broken body with the upstream's bytes from `offset` on; false when that cannot
   * be had (no fetch, too many resumptions, or an answer that is not exactly that range).
   */
  async #resume(offset: number, cause: unknown): Promise<boolean> {
    if (!this.#fetch || this.#resumes >= MAX_RESUMES) return false;
    this.#resumes++;
    this.#log(
      `blob ${this.digest}: upstream body broke at ${this.#received} bytes (${
        (cause as Error)?.message ?? cause
      }); resuming from ${offset}`,
      "warn",
    );
    let response: Response | null;
    try {
      response = await this.#fetch(offset);
    } catch {
      return false;
    }
    const range = response?.headers.get("content-range") ?? "";
    const total = this.expectedSize === undefined ? "" : `/${this.expectedSize}`;
    if (
      !response?.body || response.status !== 206 || !range.startsWith(`bytes ${offset}-`) ||
      !range.endsWith(total)
    ) {
      await response?.body?.cancel();
      return false;
    }
    await this.#source.cancel();
    this.#source = new BlockSource(response.body);
    return true;
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

  #changed(): Promise<void> {
    return new Promise((resolve) => this.#wake.push(resolve));
  }

  /** Like `#changed`, but resolves after `ms` at the latest. */
  async #changedWithin(ms: number): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.#changed(),
      new Promise<void>((resolve) => timer = setTimeout(resolve, ms)),
    ]);
    clearTimeout(timer);
  }

  /**
   * A stream of the blob (or a range of it) that follows the download. Opens its own handle on
   * the spool right away; if the spool was already published away, reads from storage instead.
   * Null when this download can no longer serve it (a pass-through whose first bytes are gone):
   * the caller starts a fresh download.
   */
  reader(range?: ByteRange): ReadableStream<Uint8Array> | null {
    if (this.#isDetached && this.#state !== "failed") return null;
    let file: Deno.FsFile | undefined;
    try {
      if (this.#spool.path) file = Deno.openSync(this.#spool.path, { read: true });
    } catch { /* published (or removed): see below */ }
    if (!file && !this.#spool.full) return this.#fromStorage(range);
    const handle = file;
    const end = range ? range.end + 1 : Infinity; // exclusive
    let stream: ReadableStreamDefaultController<Uint8Array> | undefined;
    const me: ReaderPosition = {
      position: range?.start ?? 0,
      end,
      drop: (reason) => {
        close();
        try {
          stream?.error(reason);
        } catch { /* already closed */ }
      },
    };
    this.#readers.add(me);
    let filePosition = 0;
    const close = () => {
      this.#readers.delete(me);
      if (this.#spool.full) this.notify(); // the download may be waiting for this reader
      try {
        handle?.close();
      } catch { /* already closed */ }
    };
    return new ReadableStream<Uint8Array>({
      start: (controller) => void (stream = controller),
      pull: async (controller) => {
        try {
          while (true) {
            if (!this.#readers.has(me)) return; // cut off (see #dropReadersHolding)
            if (this.#state === "failed") throw this.#error;
            // The last byte a reader wants (of the blob, or of its range) waits for the
            // digest: no response completes with bytes that turn out to be wrong.
            const wanted = Math.min(this.#received, end);
            const limit = this.#state === "verified" ? wanted : wanted - 1;
            const position = me.position;
            if (position < limit) {
              let chunk = this.#fromMemory(position, limit) ??
                (me.last && position === end - 1 ? me.last : null);
              const written = this.#spool.written;
              if (!chunk && handle && position < written) {
                // Behind the blocks in memory: this part is on disk.
                if (filePosition !== position) {
                  await handle.seek(position, Deno.SeekMode.Start);
                  filePosition = position;
                }
                const buffer = new Uint8Array(
                  Math.min(READ_CHUNK, written - position, limit - position),
                );
                const n = await handle.read(buffer) ?? 0;
                if (n === 0) throw new Error("spool file ended early");
                filePosition += n;
                chunk = buffer.subarray(0, n);
                noteStreamed(n); // blocks from memory were counted when they were received
              }
              if (!chunk && position < this.#memoryFrom) {
                // Cannot happen: eviction waits for readers that still need the bytes.
                throw new Error(`bytes from ${position} left memory before this reader read them`);
              }
              if (chunk) {
                me.position += chunk.byteLength;
                if (this.#spool.full) this.notify(); // the download may be waiting for us
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

export class InflightDownloads {
  readonly #downloads = new Map<string, Promise<Download | null>>();
  readonly #spoolDir: string;
  readonly #context: DownloadContext;
  /** Every download not yet finished, joinable or not (for `settled`). */
  readonly #running = new Set<Promise<void>>();

  constructor(spoolDir: string, context: DownloadContext) {
    this.#spoolDir = spoolDir;
    this.#context = context;
  }

  /** How many downloads new requests can join (for metrics and tests). */
  get size(): number {
    return this.#downloads.size;
  }

  /** Resolves when every download under way has been published or has failed. */
  async settled(): Promise<void> {
    while (this.#downloads.size > 0 || this.#running.size > 0) {
      await Promise.allSettled([
        ...[...this.#downloads.values()].map((d) => d.then((download) => download?.finished)),
        ...this.#running,
      ]);
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
  join(digest: string, fetch: FetchBlob, namespace = ""): Promise<Download | null> {
    const running = this.#downloads.get(digest);
    if (running) return running;
    const started = this.#start(digest, fetch, namespace);
    this.#downloads.set(digest, started);
    // Only this download's entry: a fresh one may have replaced it once it detached.
    const forget = () => {
      if (this.#downloads.get(digest) === started) this.#downloads.delete(digest);
    };
    started.then(
      (download) => {
        if (!download) return forget();
        const finished = download.finished.catch(() => {});
        this.#running.add(finished);
        finished.finally(() => this.#running.delete(finished));
        download.detached.then(forget);
        finished.finally(forget);
      },
      forget,
    );
    return started;
  }

  async #start(digest: string, fetch: FetchBlob, namespace: string): Promise<Download | null> {
    const response = await fetch();
    if (!response) return null;
    let spool: Spool;
    try {
      spool = await Spool.create(this.#spoolDir, parseDigest(digest).hex);
    } catch (e) {
      await response.body?.cancel();
      throw e;
    }
    return new Download(digest, spool, response, this.#context, fetch, namespace);
  }
}
