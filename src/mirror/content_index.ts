/**
 * What the mirror holds, in memory, for the cache size bound: the size of every mirrored
 * manifest and blob, which manifests reference which content, which tag links point at which
 * manifest, when each object was last read and who is reading it now. Only the bound
 * (mirror/bound.ts) acts on it; the mirror reports what it stores and serves.
 *
 * Entries are keyed by storage key (layout.ts), so a blob and a manifest with one digest stay
 * apart. Per entry: a key, two numbers and, for manifests, the keys of their children.
 */
import { manifestReferences } from "../oci/manifest.ts";
import { blobKey, manifestKey } from "../storage/layout.ts";

export interface Entry {
  key: string;
  size: number;
  /** Milliseconds since the epoch of the last read (or the write, before any read). */
  lastAccess: number;
  /** Manifests only: the storage keys of the config, layers and child manifests. */
  children?: string[];
}

/** One image (a manifest nobody references, with all it references) or one lone blob. */
export interface Unit {
  root: Entry;
  /** The most recent access to the root or any manifest below it. */
  lastAccess: number;
}

export class ContentIndex {
  readonly #entries = new Map<string, Entry>();
  /** How many indexed manifests reference a key (present or not). */
  readonly #refs = new Map<string, number>();
  /** Mirrored tag link key -> manifest key, and the reverse. */
  readonly #tagTarget = new Map<string, string>();
  readonly #tagsOf = new Map<string, Set<string>>();
  /** Response bodies streaming a blob right now, by key. */
  readonly #readers = new Map<string, number>();
  /** Keys read since the access times were last flushed. */
  readonly #dirty = new Set<string>();
  #bytes = 0;
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  get bytes(): number {
    return this.#bytes;
  }

  get entries(): number {
    return this.#entries.size;
  }

  get(key: string): Entry | undefined {
    return this.#entries.get(key);
  }

  has(key: string): boolean {
    return this.#entries.has(key);
  }

  addBlob(digest: string, size: number, lastAccess = this.#now()): void {
    this.#add({ key: blobKey(digest), size, lastAccess });
  }

  addManifest(digest: string, bytes: Uint8Array, lastAccess = this.#now()): void {
    const key = manifestKey(digest);
    if (this.#entries.has(key)) return;
    const children = childKeys(bytes);
    for (const child of children) this.#refs.set(child, (this.#refs.get(child) ?? 0) + 1);
    this.#add({ key, size: bytes.byteLength, lastAccess, children });
  }

  #add(entry: Entry): void {
    const known = this.#entries.get(entry.key);
    if (known) {
      known.lastAccess = Math.max(known.lastAccess, entry.lastAccess);
      return;
    }
    this.#entries.set(entry.key, entry);
    this.#bytes += entry.size;
  }

  /** A mirrored tag link now points at `digest` (a moved tag leaves its old manifest). */
  setTag(tagKey: string, digest: string): void {
    const target = manifestKey(digest);
    const previous = this.#tagTarget.get(tagKey);
    if (previous === target) return;
    if (previous) this.#tagsOf.get(previous)?.delete(tagKey);
    this.#tagTarget.set(tagKey, target);
    let tags = this.#tagsOf.get(target);
    if (!tags) this.#tagsOf.set(target, tags = new Set());
    tags.add(tagKey);
  }

  /**
   * Mirrored repositories with a tag cached: their tags and the bytes of the images those tags
   * name (content two repositories share counts in both).
   */
  repositories(): { namespace: string; repository: string; tags: number; bytes: number }[] {
    const byName = new Map<string, { tags: number; keys: Set<string> }>();
    for (const [tagKey, manifest] of this.#tagTarget) {
      const match = /^repositories\/(.+)\/_tags\/[^/]+$/.exec(tagKey);
      const root = this.#entries.get(manifest);
      if (!match || !root) continue;
      let repo = byName.get(match[1]);
      if (!repo) byName.set(match[1], repo = { tags: 0, keys: new Set() });
      repo.tags++;
      for (const member of this.members(root)) repo.keys.add(member.key);
    }
    return [...byName].map(([name, { tags, keys }]) => {
      const slash = name.indexOf("/");
      let bytes = 0;
      for (const key of keys) bytes += this.#entries.get(key)?.size ?? 0;
      return { namespace: name.slice(0, slash), repository: name.slice(slash + 1), tags, bytes };
    }).sort((a, b) => b.bytes - a.bytes);
  }

  /** The tag links pointing at a manifest. */
  tagsOf(key: string): string[] {
    return [...this.#tagsOf.get(key) ?? []];
  }

  touch(key: string): void {
    const entry = this.#entries.get(key);
    if (!entry) return;
    entry.lastAccess = this.#now();
    this.#dirty.add(key);
  }

  /** Applies access times read back from storage (never makes an entry look older). */
  applyAccess(times: Record<string, number>): void {
    for (const [key, time] of Object.entries(times)) {
      const entry = this.#entries.get(key);
      if (entry && typeof time === "number" && time > entry.lastAccess) {
        entry.lastAccess = time;
        this.#dirty.add(key);
      }
    }
  }

  /** Access times changed since the last call, to be written in one batch. */
  takeDirty(): Record<string, number> {
    const times: Record<string, number> = {};
    for (const key of this.#dirty) {
      const entry = this.#entries.get(key);
      if (entry) times[key] = entry.lastAccess;
    }
    this.#dirty.clear();
    return times;
  }

  /**
   * Counts `body` as a reader of the blob until it ends, fails or is cancelled; its end is an
   * access too, so a blob just served stays protected for the grace period after it.
   */
  reading(key: string, body: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
    this.#readers.set(key, (this.#readers.get(key) ?? 0) + 1);
    this.touch(key);
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      const left = (this.#readers.get(key) ?? 1) - 1;
      if (left > 0) this.#readers.set(key, left);
      else this.#readers.delete(key);
      this.touch(key);
    };
    const reader = body.getReader();
    return new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          const { done, value } = await reader.read();
          if (done) {
            release();
            controller.close();
          } else controller.enqueue(value);
        } catch (e) {
          release();
          controller.error(e);
        }
      },
      cancel(reason) {
        release();
        return reader.cancel(reason);
      },
    }, { highWaterMark: 0 });
  }

  /** Read now, or within `graceMs`: not to be deleted. */
  inUse(key: string, graceMs: number): boolean {
    if (this.#readers.has(key)) return true;
    const entry = this.#entries.get(key);
    return entry !== undefined && this.#now() - entry.lastAccess < graceMs;
  }

  referenced(key: string): boolean {
    return this.refCount(key) > 0;
  }

  refCount(key: string): number {
    return this.#refs.get(key) ?? 0;
  }

  /** Images and lone blobs, least recently used first. */
  units(): Unit[] {
    const units: Unit[] = [];
    for (const entry of this.#entries.values()) {
      if (this.referenced(entry.key)) continue;
      units.push({ root: entry, lastAccess: this.#recency(entry, 0) });
    }
    return units.sort((a, b) => a.lastAccess - b.lastAccess);
  }

  /** A manifest's recency includes its child manifests' (a pull by digest reads only those). */
  #recency(entry: Entry, depth: number): number {
    let latest = entry.lastAccess;
    if (depth > 4) return latest; // indexes of indexes are rare; cycles impossible but cheap to stop
    for (const child of entry.children ?? []) {
      const found = child.startsWith("manifests/") ? this.#entries.get(child) : undefined;
      if (found) latest = Math.max(latest, this.#recency(found, depth + 1));
    }
    return latest;
  }

  /** Every key of a unit: the root, then what it references (present ones only). */
  members(root: Entry): Entry[] {
    const seen = new Set<string>();
    const out: Entry[] = [];
    const visit = (entry: Entry) => {
      if (seen.has(entry.key)) return;
      seen.add(entry.key);
      out.push(entry);
      for (const child of entry.children ?? []) {
        const found = this.#entries.get(child);
        if (found) visit(found);
      }
    };
    visit(root);
    return out;
  }

  /** Forgets an entry; its children lose a reference. Tag links to it are forgotten too. */
  remove(key: string): void {
    const entry = this.#entries.get(key);
    if (!entry) return;
    this.#entries.delete(key);
    this.#bytes -= entry.size;
    this.#dirty.delete(key);
    for (const child of entry.children ?? []) {
      const left = (this.#refs.get(child) ?? 1) - 1;
      if (left > 0) this.#refs.set(child, left);
      else this.#refs.delete(child);
    }
    for (const tag of this.#tagsOf.get(key) ?? []) this.#tagTarget.delete(tag);
    this.#tagsOf.delete(key);
  }
}

/** Storage keys of what a manifest references: config and layers (blobs), entries (manifests). */
export function childKeys(bytes: Uint8Array): string[] {
  const { blobs, manifests } = manifestReferences(bytes);
  return [...blobs.map(blobKey), ...manifests.map(manifestKey)];
}
