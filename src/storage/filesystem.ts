/**
 * Filesystem storage: every key is a file below `root`. Writes go to a temporary file in
 * `root/.tmp/` (same filesystem, so the final step is an atomic `rename`); a reader therefore
 * sees the old object, or none, until the new one is complete and verified.
 *
 * One process owns a root: it holds an advisory lock on `root/.tmp/.lock` and, when it gets it,
 * removes what a crashed predecessor left in `root/.tmp/`. A second process sharing the root
 * works too but leaves the temp directory alone.
 */
import { IN_PLACE_STREAMING, type Streaming } from "../runtime/streaming.ts";
import { ContentCheck } from "../oci/digest.ts";
import { RegistryError } from "../oci/errors.ts";
import {
  assertSafeKey,
  type ByteRange,
  checkRange,
  type ObjectBody,
  type ObjectInfo,
  type Storage,
  type WriteOptions,
} from "./storage.ts";

/** Directory (below root) for in-progress writes and download spools. */
export const TEMP_DIR = ".tmp";
const LOCK_FILE = ".lock";
/** Read buffer size; large reads are what make serving from disk fast. */
const CHUNK_SIZE = 1 << 20;

export class FilesystemStorage implements Storage {
  readonly root: string;
  readonly description: string;
  /** Where in-progress writes (and the cache's download spools) live: same filesystem as root. */
  readonly tempDir: string;
  #lock?: Deno.FsFile;
  readonly #streamed: Streaming["streamed"];

  /**
   * Creates the directories and, unless another process holds the root, removes what a crashed
   * predecessor left in the temp directory. Synchronous on purpose: the cleanup is over before
   * anyone (the cache's download spools included) can put a file there.
   */
  constructor(
    root: string,
    options: { keepTemp?: boolean; streaming?: Pick<Streaming, "streamed"> } = {},
  ) {
    this.#streamed = (options.streaming ?? IN_PLACE_STREAMING).streamed;
    // Trailing slashes would only make joined paths uglier.
    this.root = root.length > 1 ? root.replace(/\/+$/, "") : root;
    this.tempDir = `${this.root}/${TEMP_DIR}`;
    this.description = `filesystem ${this.root}`;
    Deno.mkdirSync(this.tempDir, { recursive: true });
    const lock = Deno.openSync(`${this.tempDir}/${LOCK_FILE}`, {
      read: true,
      write: true,
      create: true,
    });
    let owner: boolean;
    try {
      owner = lock.tryLockSync(true);
    } catch {
      owner = true; // a filesystem without locks: assume we are alone, as we usually are
    }
    this.#lock = lock;
    // `oci-registry gc` looks at the temp directory instead (a dry run must not change it).
    if (!owner || options.keepTemp) return;
    try {
      for (const entry of Deno.readDirSync(this.tempDir)) {
        if (entry.name === LOCK_FILE) continue;
        try {
          Deno.removeSync(`${this.tempDir}/${entry.name}`, { recursive: true });
        } catch (e) {
          ignoreNotFound(e);
        }
      }
    } catch (e) {
      lock.close();
      throw e;
    }
  }

  /** A fresh path in the temp directory (same filesystem as the objects), not yet created. */
  tempPath(): string {
    return `${this.tempDir}/${crypto.randomUUID()}`;
  }

  #path(key: string): string {
    assertSafeKey(key);
    if (key.startsWith(".")) {
      // `.tmp/` and `.lock` are ours; layout.ts never builds keys like these.
      throw new TypeError(`unsafe storage key: ${JSON.stringify(key)}`);
    }
    return `${this.root}/${key}`;
  }

  async stat(key: string): Promise<ObjectInfo | null> {
    const path = this.#path(key);
    try {
      const info = await Deno.stat(path);
      return info.isFile ? { size: info.size, modified: info.mtime ?? new Date(0) } : null;
    } catch (e) {
      return nullIfAbsent(e);
    }
  }

  async read(key: string, range?: ByteRange): Promise<ObjectBody | null> {
    const path = this.#path(key);
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      return nullIfAbsent(e);
    }
    try {
      const info = await file.stat();
      if (!info.isFile) {
        file.close();
        return null;
      }
      const size = info.size;
      let start = 0;
      let end = size - 1;
      if (range) {
        checkRange(range, size);
        start = range.start;
        end = Math.min(range.end, size - 1);
        if (start > 0) await file.seek(start, Deno.SeekMode.Start);
      }
      return {
        size,
        modified: info.mtime ?? new Date(0),
        body: fileStream(file, end - start + 1, this.#streamed),
      };
    } catch (e) {
      file.close();
      throw e;
    }
  }

  async readBytes(key: string): Promise<Uint8Array | null> {
    const path = this.#path(key);
    try {
      return await Deno.readFile(path);
    } catch (e) {
      if (e instanceof Deno.errors.IsADirectory) return null;
      return nullIfAbsent(e);
    }
  }

  async write(
    key: string,
    data: Uint8Array | ReadableStream<Uint8Array>,
    options: WriteOptions = {},
  ): Promise<void> {
    try {
      await this.#write(key, data, options);
    } catch (e) {
      throw writeError(e, `write ${key}`);
    }
  }

  async #write(
    key: string,
    data: Uint8Array | ReadableStream<Uint8Array>,
    options: WriteOptions,
  ): Promise<void> {
    const path = this.#path(key);
    const check = new ContentCheck(options);
    if (data instanceof Uint8Array) {
      // Verify before touching the disk: nothing to clean up on a mismatch.
      check.update(data);
      check.finish();
    }
    const temp = this.tempPath();
    const file = await Deno.open(temp, { write: true, createNew: true });
    try {
      try {
        if (data instanceof Uint8Array) {
          await writeAll(file, data);
        } else {
          for await (const chunk of data) {
            check.update(chunk);
            await writeAll(file, chunk);
          }
          check.finish();
        }
      } finally {
        file.close();
      }
      await this.#publish(temp, path);
    } catch (e) {
      await Deno.remove(temp).catch(ignoreNotFound);
      throw e;
    }
  }

  async publishFile(key: string, path: string, options: WriteOptions = {}): Promise<void> {
    try {
      await this.#publishFile(key, path, options);
    } catch (e) {
      throw writeError(e, `publish ${key}`);
    }
  }

  async #publishFile(key: string, path: string, options: WriteOptions): Promise<void> {
    const target = this.#path(key);
    if (options.size !== undefined) {
      const info = await Deno.stat(path);
      new ContentCheck({ size: options.size }).finishWithSize(info.size, path);
    }
    if (options.digest !== undefined) {
      // The caller usually verified the spool while downloading and passes no digest; if it
      // does, honour the contract and hash the file again.
      const check = new ContentCheck({ digest: options.digest });
      using file = await Deno.open(path, { read: true });
      const buffer = new Uint8Array(CHUNK_SIZE);
      for (;;) {
        const n = await file.read(buffer);
        if (n === null) break;
        check.update(buffer.subarray(0, n));
      }
      check.finish();
    }
    try {
      await this.#publish(path, target);
      return;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound && !(await exists(path))) throw e;
      // Most likely another filesystem (EXDEV): copy next to the target, then rename.
    }
    const temp = this.tempPath();
    try {
      await Deno.copyFile(path, temp);
      await this.#publish(temp, target);
    } catch (e) {
      await Deno.remove(temp).catch(ignoreNotFound);
      throw e;
    }
    await Deno.remove(path).catch(ignoreNotFound);
  }

  /** Atomically moves `from` to `to`, creating parent directories (again, if a delete pruned them). */
  async #publish(from: string, to: string): Promise<void> {
    const parent = to.slice(0, to.lastIndexOf("/"));
    for (let attempt = 0;; attempt++) {
      await Deno.mkdir(parent, { recursive: true });
      try {
        await Deno.rename(from, to);
        return;
      } catch (e) {
        // A concurrent delete may have removed the freshly created (empty) parent.
        if (!(e instanceof Deno.errors.NotFound) || attempt >= 5 || !(await exists(from))) throw e;
      }
    }
  }

  async move(from: string, to: string): Promise<void> {
    const source = this.#path(from);
    const target = this.#path(to);
    try {
      await this.#publish(source, target);
    } catch (e) {
      throw writeError(e, `move ${from} to ${to}`);
    }
    await this.#prune(source);
  }

  async delete(key: string): Promise<void> {
    const path = this.#path(key);
    try {
      await Deno.remove(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      throw e;
    }
    await this.#prune(path);
  }

  /** Removes directories that removing `path` left empty (tag directories of removed repositories). */
  async #prune(path: string): Promise<void> {
    let dir = path.slice(0, path.lastIndexOf("/"));
    while (dir.length > this.root.length) {
      try {
        await Deno.remove(dir); // fails unless empty
      } catch {
        break;
      }
      dir = dir.slice(0, dir.lastIndexOf("/"));
    }
  }

  async *list(prefix: string): AsyncIterable<string> {
    const slash = prefix.lastIndexOf("/");
    const dirKey = prefix.slice(0, slash + 1); // "" or "a/b/"
    if (dirKey !== "") this.#path(dirKey.slice(0, -1));
    yield* this.#walk(dirKey, prefix);
  }

  async *#walk(dirKey: string, prefix: string): AsyncIterable<string> {
    const entries: Deno.DirEntry[] = [];
    try {
      for await (const entry of Deno.readDir(`${this.root}/${dirKey}`)) entries.push(entry);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return;
      throw e;
    }
    for (const entry of entries) {
      if (dirKey === "" && entry.name.startsWith(".")) continue;
      const key = dirKey + entry.name;
      if (entry.isDirectory) {
        if ((key + "/").startsWith(prefix) || prefix.startsWith(key + "/")) {
          yield* this.#walk(key + "/", prefix);
        }
      } else if (entry.isFile && key.startsWith(prefix)) {
        yield key;
      }
    }
  }

  close(): Promise<void> {
    const lock = this.#lock;
    this.#lock = undefined;
    lock?.close(); // closing releases the advisory lock
    return Promise.resolve();
  }
}

/**
 * A byte stream over `length` bytes of an open file from its current position, read straight
 * into the consumer's buffer (1 MiB at a time), each read told to `streamed`. The file is
 * closed at the end, on cancel and on error.
 */
export function fileStream(
  file: Deno.FsFile,
  length: number,
  streamed: Streaming["streamed"] = IN_PLACE_STREAMING.streamed,
): ReadableStream<Uint8Array> {
  let remaining = length;
  let open = true;
  const close = () => {
    if (open) {
      open = false;
      file.close();
    }
  };
  return new ReadableStream({
    type: "bytes",
    autoAllocateChunkSize: CHUNK_SIZE,
    start(controller) {
      if (remaining <= 0) {
        close();
        controller.close();
      }
    },
    async pull(controller) {
      const request = controller.byobRequest!;
      const view = request.view!;
      try {
        const want = Math.min(view.byteLength, remaining);
        const n = await file.read(new Uint8Array(view.buffer, view.byteOffset, want));
        if (n === null) {
          // Cannot happen with atomic publication (the inode never shrinks); fail loudly.
          close();
          controller.error(new Error(`file ended ${remaining} bytes early`));
          return;
        }
        remaining -= n;
        request.respond(n);
        streamed(n);
        if (remaining <= 0) {
          close();
          controller.close();
        }
      } catch (e) {
        close();
        controller.error(e);
      }
    },
    cancel() {
      close();
    },
  });
}

/**
 * The one place a failed local write is classified: a full disk or an exhausted quota becomes
 * RegistryError INSUFFICIENT_STORAGE (the cache then passes content through uncached); any other
 * error is returned as it is. Also used for the cache's download spools, which live here too.
 */
export function writeError(e: unknown, what: string): unknown {
  if (e instanceof RegistryError) return e;
  const code = (e as { code?: unknown })?.code;
  const message = e instanceof Error ? e.message : String(e);
  if (
    code === "ENOSPC" || code === "EDQUOT" ||
    /No space left on device|Disk quota exceeded|os error (28|122)\b/.test(message)
  ) {
    return new RegistryError("INSUFFICIENT_STORAGE", `${what}: ${message}`, { cause: e });
  }
  return e;
}

async function writeAll(file: Deno.FsFile, data: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < data.byteLength) {
    offset += await file.write(data.subarray(offset));
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

function nullIfAbsent(e: unknown): null {
  if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return null;
  throw e;
}

function ignoreNotFound(e: unknown): void {
  if (!(e instanceof Deno.errors.NotFound)) throw e;
}
