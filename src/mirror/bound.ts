/**
 * The cache size bound (--max-cache-size): builds the content index from storage at start,
 * writes access times back in batches, and evicts least-recently-used mirrored images when the
 * cache grows past its bound.
 *
 * The unit of eviction is an image: a manifest nobody references, with everything it
 * references that nothing else kept references (a blob two images share goes with the last of
 * them). Content of hosted repositories is never deleted (it is re-listed before every run),
 * and nothing read now or within the grace period is deleted under its reader.
 */
import { isDigest } from "../oci/digest.ts";
import type { LogFn } from "../runtime/log.ts";
import {
  ACCESS_TIMES_PREFIX,
  blobKey,
  digestOfKey,
  hostedPrefix,
  manifestKey,
  parseLinkDigest,
} from "../storage/layout.ts";
import type { Storage } from "../storage/storage.ts";
import { ContentIndex, type Entry } from "./content_index.ts";

export interface CacheBoundOptions {
  storage: Storage;
  maxBytes: number;
  /** Hosted namespaces: their content is never evicted, nor counted. */
  hosted: string[];
  /** Content read this recently is not evicted (a client may still be fetching its parts). */
  graceMs: number;
  log: LogFn;
  /** Told which storage keys were deleted, so memory caches drop them too. */
  onEvicted?: (keys: string[]) => void;
  now?: () => number;
  /** How often access times are written and the bound re-checked. */
  intervalMs?: number;
}

/** A run shrinks the cache to this share of its bound, so that not every new blob triggers one. */
const LOW_WATERMARK = 0.9;
const FLUSH_INTERVAL_MS = 30_000;
/** Access-time files of replicas that stopped writing this long ago are merged and removed. */
const STALE_ACCESS_FILE_MS = 24 * 3600_000;
const LOAD_CONCURRENCY = 8;

export class CacheBound {
  readonly index: ContentIndex;
  readonly maxBytes: number;
  /** Images (and lone blobs) evicted, and the bytes that freed. */
  evictions = 0;
  evictedBytes = 0;
  readonly #options: CacheBoundOptions;
  readonly #now: () => number;
  readonly #accessKey = `${ACCESS_TIMES_PREFIX}${crypto.randomUUID()}`;
  /** Every key this process has read: its access file holds all of them. */
  readonly #touched = new Set<string>();
  #running: Promise<void> | null = null;
  #again = false;
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(options: CacheBoundOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.maxBytes = options.maxBytes;
    this.index = new ContentIndex(this.#now);
  }

  /** Reads sizes, references, tag links and access times of everything mirrored in storage. */
  async load(): Promise<void> {
    const { storage } = this.#options;
    const pinned = await hostedKeys(storage, this.#options.hosted);
    await eachLimited(storage.list("manifests/"), async (key) => {
      const digest = digestOfKey(key);
      if (!digest || pinned.has(key)) return;
      const [info, bytes] = await Promise.all([storage.stat(key), storage.readBytes(key)]);
      if (info && bytes) this.index.addManifest(digest, bytes, info.modified.getTime());
    });
    await eachLimited(storage.list("blobs/"), async (key) => {
      const digest = digestOfKey(key);
      if (!digest || pinned.has(key)) return;
      const info = await storage.stat(key);
      if (info) this.index.addBlob(digest, info.size, info.modified.getTime());
    });
    const hostedRoots = this.#options.hosted.map((ns) => hostedPrefix(ns));
    await eachLimited(storage.list("repositories/"), async (key) => {
      if (!key.includes("/_tags/") || hostedRoots.some((root) => key.startsWith(root))) return;
      const digest = parseLinkDigest(await storage.readBytes(key));
      if (digest) this.index.setTag(key, digest);
    });
    await eachLimited(storage.list(ACCESS_TIMES_PREFIX), async (key) => {
      const bytes = await storage.readBytes(key);
      try {
        this.index.applyAccess(JSON.parse(new TextDecoder().decode(bytes ?? new Uint8Array())));
      } catch { /* a damaged file only loses recency */ }
      const info = await storage.stat(key);
      if (info && this.#now() - info.modified.getTime() > STALE_ACCESS_FILE_MS) {
        await storage.delete(key); // merged into this process's file at its first flush
      }
    });
    // What was merged from other files is written to this one, so old files can go.
    for (const key of Object.keys(this.index.takeDirty())) this.#touched.add(key);
    this.#options.log(
      `cache bound ${this.maxBytes} bytes: ${this.index.bytes} bytes in ${this.index.entries} objects`,
    );
  }

  /** Periodic flush and re-check; an eviction right away when already over the bound. */
  start(): void {
    this.#timer = setInterval(() => {
      this.flush().catch((e) => this.#options.log(`access times not written: ${e}`, "warn"));
      this.check();
    }, this.#options.intervalMs ?? FLUSH_INTERVAL_MS);
    this.check();
  }

  /** Starts an eviction run when the cache is over its bound (one at a time). */
  check(): void {
    if (this.index.bytes <= this.maxBytes) return;
    if (this.#running) {
      this.#again = true;
      return;
    }
    this.#running = this.evict()
      .catch((e) => this.#options.log(`eviction failed: ${(e as Error).message}`, "warn"))
      .finally(() => {
        this.#running = null;
        if (this.#again) {
          this.#again = false;
          this.check();
        }
      });
  }

  /** Resolves when no eviction run is under way (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.#running) await this.#running;
  }

  /** Evicts least recently used images until the cache is at its low watermark. */
  async evict(): Promise<void> {
    if (this.index.bytes <= this.maxBytes) return;
    const { storage, graceMs } = this.#options;
    const index = this.index;
    const target = this.maxBytes * LOW_WATERMARK;
    const pinned = await hostedKeys(storage, this.#options.hosted);
    for (const unit of index.units()) {
      if (index.bytes <= target) break;
      if (!index.has(unit.root.key)) continue;
      const doomed = this.#doomed(unit.root);
      if (doomed.some((entry) => !pinned.has(entry.key) && index.inUse(entry.key, graceMs))) {
        continue; // a reader may be in the middle of this image: keep it whole
      }
      const deleted: string[] = [];
      let freed = 0;
      for (const entry of doomed) {
        if (pinned.has(entry.key)) {
          index.remove(entry.key); // a hosted repository holds it now: never ours to delete
          continue;
        }
        if (index.inUse(entry.key, graceMs)) continue; // picked up just now: left for later
        // Tag links first: a pull that reads one afterwards misses and fetches again.
        for (const tag of index.tagsOf(entry.key)) {
          await storage.delete(tag);
          deleted.push(tag);
        }
        await storage.delete(entry.key);
        deleted.push(entry.key);
        freed += entry.size;
        index.remove(entry.key);
      }
      this.evictions++;
      this.evictedBytes += freed;
      this.#options.onEvicted?.(deleted);
      this.#options.log(`evicted ${unit.root.key} (${freed} bytes, ${deleted.length} objects)`);
    }
  }

  /** The root and what only it (directly or through its child manifests) references. */
  #doomed(root: Entry): Entry[] {
    const members = this.index.members(root);
    const inside = new Map<string, number>();
    for (const member of members) {
      for (const child of member.children ?? []) inside.set(child, (inside.get(child) ?? 0) + 1);
    }
    return members.filter((member) =>
      member === root || this.index.refCount(member.key) <= (inside.get(member.key) ?? 0)
    );
  }

  /** Writes this process's access times in one object (never a write per request). */
  async flush(): Promise<void> {
    const dirty = Object.keys(this.index.takeDirty());
    if (dirty.length === 0) return;
    for (const key of dirty) this.#touched.add(key);
    const times: Record<string, number> = {};
    for (const key of this.#touched) {
      const entry = this.index.get(key);
      if (entry) times[key] = entry.lastAccess;
      else this.#touched.delete(key);
    }
    await this.#options.storage.write(
      this.#accessKey,
      new TextEncoder().encode(JSON.stringify(times)),
    );
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    await this.settled();
    await this.flush().catch(() => {});
  }
}

/** Blobs and manifests some hosted repository links (its content: never evicted). */
export async function hostedKeys(storage: Storage, hosted: string[]): Promise<Set<string>> {
  const keys = new Set<string>();
  for (const namespace of hosted) {
    for await (const key of storage.list(hostedPrefix(namespace))) {
      const link = /\/_(blobs|manifests)\/([a-z0-9]+)\/([a-f0-9]+)$/.exec(key);
      if (!link) continue;
      const digest = `${link[2]}:${link[3]}`;
      if (!isDigest(digest)) continue;
      keys.add(link[1] === "blobs" ? blobKey(digest) : manifestKey(digest));
    }
  }
  return keys;
}

/** Runs `fn` over every key with a few requests in flight (S3 lists can be long). */
async function eachLimited(
  keys: AsyncIterable<string>,
  fn: (key: string) => Promise<void>,
): Promise<void> {
  const running = new Set<Promise<void>>();
  for await (const key of keys) {
    const task: Promise<void> = fn(key).finally(() => running.delete(task));
    running.add(task);
    if (running.size >= LOAD_CONCURRENCY) await Promise.race(running);
  }
  await Promise.all(running);
}
