/**
 * The local file a blob download is written to as it arrives: readers far behind the network
 * read it with their own handle, and a verified download is published from it.
 *
 * A full disk does not fail the download: the spool stops taking blocks (what was written
 * stays readable) and reports `full`; the download then goes on without it, uncached.
 */
import { isStorageFull, RegistryError } from "../oci/errors.ts";
import { writeError } from "../storage/filesystem.ts";

export class Spool {
  /** The file's path; undefined when it could not even be created (disk full). */
  readonly path: string | undefined;
  /** Bytes on disk so far (whole blocks, in order from byte 0). */
  written = 0;
  /** Set once the disk refused a write: later blocks are not written. */
  full: RegistryError | undefined;
  /** Any other write failure: the download fails with it. */
  failure: unknown;
  #file: Deno.FsFile | undefined;
  #queue: Promise<void> = Promise.resolve();
  /** Called whenever `written`, `full` or `failure` changed. */
  onChange: () => void = () => {};

  private constructor(
    path: string | undefined,
    file: Deno.FsFile | undefined,
    full: RegistryError | undefined,
  ) {
    this.path = path;
    this.#file = file;
    this.full = full;
  }

  /** Creates a spool in `dir`; one that is full from the start when the disk refuses even that. */
  static async create(dir: string, name: string): Promise<Spool> {
    const path = `${dir}/spool-${name}-${crypto.randomUUID()}`;
    try {
      await Deno.mkdir(dir, { recursive: true });
      const file = await Deno.open(path, { write: true, createNew: true });
      return new Spool(path, file, undefined);
    } catch (e) {
      const error = writeError(e, `cannot create spool file`);
      if (isStorageFull(error)) return new Spool(undefined, undefined, error as RegistryError);
      throw new RegistryError("UNAVAILABLE", `cannot create spool file: ${(e as Error).message}`);
    }
  }

  /** Queues a finished block after the ones before it; one write at a time. */
  append(bytes: Uint8Array): void {
    this.#queue = this.#queue.then(async () => {
      if (this.full || this.failure !== undefined || !this.#file) return;
      try {
        let offset = 0;
        while (offset < bytes.byteLength) offset += await this.#file.write(bytes.subarray(offset));
        this.written += bytes.byteLength;
      } catch (e) {
        const error = writeError(e, "spool write");
        if (isStorageFull(error)) this.full = error as RegistryError;
        else this.failure = e;
      }
      this.onChange();
    });
  }

  /** Resolves when every queued block was written (or refused). */
  settled(): Promise<void> {
    return this.#queue;
  }

  close(): void {
    try {
      this.#file?.close();
    } catch { /* already closed */ }
    this.#file = undefined;
  }

  /** Removes the file (readers that opened it keep reading through their handles). */
  async remove(): Promise<void> {
    if (this.path) await Deno.remove(this.path).catch(() => {});
  }
}
