/**
 * Single-flight, streaming blob downloads.
 *
 * The first request for a missing blob starts ONE upstream download. The network body is read
 * straight into fresh 1 MiB blocks; each finished block is hashed, written to a spool file and
 * handed, as it is, to every reader near the head of the download (fanout.ts: readers follow
 * at their own pace, from the last BLOCKS_IN_MEMORY blocks or from the spool). Memory per
 * download is a few blocks whatever the blob size.
 *
 * Only verified spools are published to storage, and readers get their last byte only once the
 * digest of the whole blob is verified: a failed or corrupt download errors every reader.
 *
 * When the disk is full the download goes on as a pass-through: still one download for every
 * reader, still verified, nothing published; the slowest reader paces it (see fanout.ts).
 */
import type { LogFn } from "../runtime/log.ts";
import { parseDigest } from "../oci/digest.ts";
import type { Streaming } from "../runtime/streaming.ts";
import { isStorageFull, RegistryError } from "../oci/errors.ts";
import type { ByteRange, Storage } from "../storage/storage.ts";
import { blobKey } from "../storage/layout.ts";
import { BlockSource } from "./block_source.ts";
import { Fanout } from "./fanout.ts";
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

/**
 * Starts the upstream GET for a digest; resolves once headers arrived (2xx only), or to null
 * when the blob turned out to be stored already (published by a download that just ended).
 * With `from`, asks for the bytes from that offset on (`Range: bytes=from-`): a body cut
 * mid-way is resumed, not started over.
 */
export type FetchBlob = (from?: number) => Promise<Response | null>;

/** Resumptions of one download's body before its failure is final. */
const MAX_RESUMES = 3;

/** What every download of one mirror shares. */
export interface DownloadContext {
  storage: Storage;
  health: StoreHealth;
  log: LogFn;
  /** How long a pass-through waits for a reader that does not read before cutting it off. */
  stalledReaderMs: number;
  /** Hashes each download, and is told of the bytes received and read back from spools. */
  streaming: Streaming;
  /** Told of every blob published (the cache size bound counts it). */
  onPublished?: (digest: string, size: number) => void;
}

export class Download {
  readonly digest: string;
  /** Size announced by upstream (Content-Length), when it announced one. */
  readonly expectedSize: number | undefined;
  /** Settles when the blob is published (or passed through, or the download failed). */
  readonly finished: Promise<void>;
  /** The readers following this download, and what they may take of it. */
  readonly #fanout: Fanout;
  #storage: Storage;
  #spool: Spool;
  #health: StoreHealth;
  #onPublished: DownloadContext["onPublished"];
  #fetch: FetchBlob | undefined;
  #namespace: string;
  #source!: BlockSource;
  #resumes = 0;
  #log: LogFn;
  #streaming: Streaming;

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
    this.#fanout = new Fanout(digest, spool, {
      stalledReaderMs: context.stalledReaderMs,
      log: context.log,
      streamed: context.streaming.streamed,
    });
    this.#streaming = context.streaming;
    this.#storage = context.storage;
    this.#health = context.health;
    this.#onPublished = context.onPublished;
    this.#fetch = fetch;
    this.#namespace = namespace;
    const log = context.log;
    this.#log = log;
    const length = response.headers.get("content-length");
    this.expectedSize = length !== null && /^\d+$/.test(length) ? Number(length) : undefined;
    this.finished = this.#run(response.body!, log);
    this.finished.catch(() => {}); // failures reach readers and are logged; never unhandled
  }

  /** Resolves when the download takes no new readers (see `reader`): forget it then. */
  get detached(): Promise<void> {
    return this.#fanout.detached;
  }

  async #run(body: ReadableStream<Uint8Array>, log: LogFn): Promise<void> {
    const hasher = this.#streaming.hasher(parseDigest(this.digest).algorithm);
    const hashing: Promise<void>[] = []; // per block still in memory
    const fanout = this.#fanout;
    this.#source = new BlockSource(body);
    try {
      for (let block = 0;; block++) {
        // A new block evicts the one BLOCKS_IN_MEMORY back from memory: it must be on disk (and
        // hashed) first, or, with the disk full, read by every reader that needs it. That
        // bounds the memory of a download whatever the disk, the CPU and the readers do.
        const keepFrom = (block - BLOCKS_IN_MEMORY + 1) * BLOCK_SIZE;
        if (!fanout.readyToEvict(keepFrom)) await fanout.waitToEvict(keepFrom);
        if (hashing.length >= BLOCKS_IN_MEMORY) await hashing.shift();
        fanout.evict(keepFrom);

        const start = block * BLOCK_SIZE;
        const bytes = await this.#receiveBlock(start);
        if (bytes.byteLength > 0) {
          hashing.push(hasher.update(bytes));
          fanout.showBlock(start, bytes);
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
      if (this.expectedSize !== undefined && fanout.received !== this.expectedSize) {
        throw new RegistryError(
          "UPSTREAM_ERROR",
          `upstream sent ${fanout.received} of ${this.expectedSize} bytes for ${this.digest}`,
        );
      }
      fanout.verified();
      await this.#spool.settled();
      if (this.#spool.failure !== undefined) throw this.#spool.failure;
    } catch (e) {
      if (fanout.state !== "verified") {
        const error = e instanceof RegistryError ? e : new RegistryError(
          "UPSTREAM_ERROR",
          `download of ${this.digest} failed: ${(e as Error)?.message ?? e}`,
          { cause: e },
        );
        fanout.failed(error);
        log(`blob ${this.digest}: ${error.message}`, "warn");
        hasher.dispose();
        await this.#source.cancel();
      } else {
        log(`blob ${this.digest}: verified but the spool failed: ${(e as Error).message}`, "warn");
      }
    } finally {
      await this.#spool.settled();
      this.#spool.close();
      fanout.notify();
    }
    if (fanout.state === "failed") {
      fanout.detach();
      await this.#spool.remove();
      throw fanout.error;
    }
    if (this.#spool.full || this.#spool.failure !== undefined) {
      // Passed through: readers still take the blocks in memory and the spool they opened.
      fanout.detach();
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
    fanout.dropMemory(); // everything is on disk now; readers use the file
    try {
      await this.#storage.publishFile(blobKey(this.digest), this.#spool.path!, {
        size: fanout.received,
      });
      this.#health.stored();
      this.#onPublished?.(this.digest, fanout.received);
    } catch (e) {
      fanout.detach();
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

  /**
   * Receives the block starting at `start`: BLOCK_SIZE bytes, fewer only where the body ended.
   * While it arrives slowly, copies of what came so far are made visible every
   * PARTIAL_AFTER_MS, so a reader at the head never waits long for the rest of the block.
   */
  async #receiveBlock(start: number): Promise<Uint8Array> {
    const fanout = this.#fanout;
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
        fanout.received = start;
        block = new Uint8Array(size);
        filled = shown = 0;
        continue;
      }
      block = got.block;
      if (got.n === 0) break;
      filled += got.n;
      fanout.received += got.n;
      this.#streaming.streamed(got.n);
      const now = performance.now();
      if (filled < size && now - shownAt >= PARTIAL_AFTER_MS) {
        fanout.showPartial(start + shown, block.slice(shown, filled));
        shown = filled;
        shownAt = now;
      }
      fanout.notify();
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
      `blob ${this.digest}: upstream body broke at ${this.#fanout.received} bytes (${
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

  /**
   * A stream of the blob (or a range of it) that follows the download (see Fanout.follow); if
   * the spool was already published away, reads from storage instead. Null when this download
   * can no longer serve it (a pass-through whose first bytes are gone): the caller starts a
   * fresh download.
   */
  reader(range?: ByteRange): ReadableStream<Uint8Array> | null {
    if (!this.#fanout.joinable) return null;
    return this.#fanout.follow(range) ?? this.#fromStorage(range);
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
