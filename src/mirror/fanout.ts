/**
 * The readers of one blob download (download.ts). Every request for the same digest,
 * concurrent or later, follows the download at its own pace: readers near the head get the
 * blocks still in memory, handed out as they are (no byte is copied in JavaScript, however many
 * clients follow), readers further behind read the spool with their own handle. A slow client
 * never slows the download, and a fast one never waits for the whole blob.
 *
 * The last byte each reader wants (the blob's last, or its range's last) is held back until
 * the digest of the whole blob is verified, so a corrupt download is never delivered whole:
 * readers are errored instead and the client's response is cut short.
 *
 * The download evicts a block from memory only when the fan-out allows it: once the block is on
 * disk or, when the disk is full (a pass-through), once every live reader that still needs it
 * has read it (the slowest reader paces the download instead of the disk). Once byte 0 is gone
 * the download stops taking new readers: later requests start a fresh download. A reader that
 * holds the download up for longer than `stalledReaderMs` (a client that stopped reading) is cut
 * off, so one stalled client cannot stop everyone else's pull.
 */
import type { LogFn } from "../runtime/log.ts";
import type { Streaming } from "../runtime/streaming.ts";
import { RegistryError } from "../oci/errors.ts";
import type { ByteRange } from "../storage/storage.ts";
import type { Spool } from "./spool.ts";

/** Largest read of the spool for a reader behind the blocks in memory. */
const READ_CHUNK = 1 << 20;

export type DownloadState = "downloading" | "verified" | "failed";

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

export class Fanout {
  /** Resolves when the download takes no new readers (see `joinable`): forget it then. */
  readonly detached: Promise<void>;
  #detach!: () => void;
  #isDetached = false;
  #state: DownloadState = "downloading";
  #error: unknown;
  /** Bytes received so far (counted by the download; readers never go past them). */
  received = 0;
  /**
   * The in-memory tail of the blob readers may take from: whole finished blocks, then copies
   * of what a slowly arriving block holds so far. Contiguous, in order, from `#memoryFrom`.
   */
  #pieces: Piece[] = [];
  #memoryFrom = 0;
  #readers = new Set<ReaderPosition>();
  #wake: (() => void)[] = [];
  readonly #digest: string;
  readonly #spool: Spool;
  readonly #stalledReaderMs: number;
  readonly #log: LogFn;
  readonly #streamed: Streaming["streamed"];

  constructor(
    digest: string,
    spool: Spool,
    options: { stalledReaderMs: number; log: LogFn; streamed: Streaming["streamed"] },
  ) {
    this.#digest = digest;
    this.#spool = spool;
    spool.onChange = () => this.notify();
    this.#stalledReaderMs = options.stalledReaderMs;
    this.#log = options.log;
    this.#streamed = options.streamed;
    this.detached = new Promise((resolve) => this.#detach = resolve);
  }

  get state(): DownloadState {
    return this.#state;
  }

  /** Why the download failed (once `state` is "failed"). */
  get error(): unknown {
    return this.#error;
  }

  /** The whole blob's digest checked out: readers may take their last bytes. */
  verified(): void {
    this.#state = "verified";
    this.notify();
  }

  /** The download failed: every reader errors with `error` (on its next wake-up). */
  failed(error: unknown): void {
    this.#state = "failed";
    this.#error = error;
  }

  /** Whether a new reader can follow: not once detached, unless failed (it errors then). */
  get joinable(): boolean {
    return !this.#isDetached || this.#state === "failed";
  }

  detach(): void {
    if (this.#isDetached) return;
    this.#isDetached = true;
    this.#detach();
  }

  /** Tells the spool's progress and the readers' moves to whoever waits (download, readers). */
  notify(): void {
    const wake = this.#wake;
    this.#wake = [];
    for (const resolve of wake) resolve();
  }

  /** Makes a copy of what a block holds so far visible (replaced by `showBlock` later). */
  showPartial(start: number, bytes: Uint8Array): void {
    this.#pieces.push({ start, bytes });
  }

  /** Makes a finished block visible, in place of the partial copies made of it. */
  showBlock(start: number, bytes: Uint8Array): void {
    while (this.#pieces.length > 0 && this.#pieces.at(-1)!.start >= start) {
      this.#pieces.pop();
    }
    this.#pieces.push({ start, bytes });
  }

  /** Drops every block from memory: everything is on disk now, readers use the file. */
  dropMemory(): void {
    this.#pieces = [];
  }

  /** Whether the bytes below `keepFrom` may leave memory. */
  readyToEvict(keepFrom: number): boolean {
    const written = this.#spool.written;
    if (keepFrom <= written) return true;
    if (!this.#spool.full) return false; // on disk soon: wait for it
    // Pass-through: no live reader may still need bytes in [written, keepFrom).
    for (const reader of this.#readers) {
      if (this.#holds(reader, keepFrom, written)) return false;
    }
    return true;
  }

  /**
   * Waits until the bytes below `keepFrom` may leave memory, cutting off the readers that hold
   * a pass-through up for too long. Throws the spool's failure.
   */
  async waitToEvict(keepFrom: number): Promise<void> {
    const waitingSince = performance.now();
    while (!this.readyToEvict(keepFrom)) {
      if (this.#spool.failure !== undefined) throw this.#spool.failure;
      if (!this.#spool.full) {
        await this.#changed();
        continue;
      }
      const left = this.#stalledReaderMs - (performance.now() - waitingSince);
      if (left <= 0) this.#dropReadersHolding(keepFrom);
      else await this.#changedWithin(left);
    }
  }

  /** Drops the bytes below `keepFrom` from memory (once `readyToEvict` allows it). */
  evict(keepFrom: number): void {
    while (this.#pieces.length > 0 && this.#pieces[0].start < keepFrom) this.#pieces.shift();
    if (keepFrom > this.#memoryFrom) {
      this.#memoryFrom = keepFrom;
      // Byte 0 is neither in memory nor on disk any more: a new reader could not be served.
      if (this.#memoryFrom > this.#spool.written) this.detach();
    }
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
  #dropReadersHolding(keepFrom: number): void {
    const written = this.#spool.written;
    const stalled = [...this.#readers].filter((r) => this.#holds(r, keepFrom, written));
    this.#log(
      `store full: blob ${this.#digest}: ${stalled.length} client(s) read nothing for ${
        this.#stalledReaderMs / 1000
      } s; cut off so the other readers of the pass-through go on`,
      "warn",
    );
    const reason = new RegistryError(
      "UNAVAILABLE",
      `blob ${this.#digest}: this client stopped reading a download shared with others`,
    );
    for (const reader of stalled) reader.drop(reason);
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
   * the spool right away; null when the spool is gone (published, or removed) and not full: the
   * caller reads the result from storage then.
   */
  follow(range?: ByteRange): ReadableStream<Uint8Array> | null {
    let file: Deno.FsFile | undefined;
    try {
      if (this.#spool.path) file = Deno.openSync(this.#spool.path, { read: true });
    } catch { /* published (or removed): see below */ }
    if (!file && !this.#spool.full) return null;
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
            const wanted = Math.min(this.received, end);
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
                this.#streamed(n); // blocks from memory were counted when they were received
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
}
