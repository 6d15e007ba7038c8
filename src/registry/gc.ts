/**
 * Garbage collection over a store (filesystem or S3): blobs no manifest references and no
 * hosted repository links, tag links to manifests that are gone, expired upload sessions, and
 * download spools a dead process left behind. Used by `oci-registry gc` (a dry run unless
 * --delete) and by the periodic task (--gc-interval).
 *
 * Safe with several replicas on one bucket: nothing younger than the safety age is touched (a
 * replica may be between writing a blob and the manifest that references it), and references
 * are listed again just before deleting, each object re-checked for its age.
 */
import { isDigest } from "../oci/digest.ts";
import { manifestReferences } from "../oci/manifest.ts";
import {
  blobKey,
  digestOfKey,
  hostedPrefix,
  manifestKey,
  parseLinkDigest,
  uploadPrefix,
  UPLOADS_PREFIX,
} from "../storage/layout.ts";
import type { Storage } from "../storage/storage.ts";

export type GarbageKind =
  | "orphaned blob"
  | "tag link to a missing manifest"
  | "expired upload"
  | "stale spool";

export interface Garbage {
  kind: GarbageKind;
  /** A storage key, or for spools a local path. */
  key: string;
  bytes: number;
}

export interface GcOptions {
  storage: Storage;
  hosted: string[];
  /** Objects younger than this are never removed. */
  minAgeMs: number;
  /** Upload sessions untouched this long are expired (as the hosted store does). */
  uploadExpiryMs: number;
  /** Local spool directories to sweep, with the age past which a file there is stale. */
  spools?: { dir: string; maxAgeMs: number; keep?: (name: string) => boolean }[];
  now?: () => number;
}

export interface GcReport {
  found: Garbage[];
  /** What was actually removed (empty for a dry run). */
  removed: Garbage[];
  bytes: number;
}

/** Default safety age: far longer than a replica takes from a blob to its manifest. */
export const DEFAULT_MIN_AGE_MS = 3600_000;
const SPOOL_MAX_AGE_MS = 24 * 3600_000;
export { SPOOL_MAX_AGE_MS };

export async function collectGarbage(options: GcOptions, remove: boolean): Promise<GcReport> {
  const found = await findGarbage(options);
  if (!remove) return { found, removed: [], bytes: sum(found) };
  const removed: Garbage[] = [];
  const { storage } = options;
  // Re-checked just before deleting: a replica may have stored a manifest (or a hosted
  // repository a link) referencing an orphan since the scan.
  const referencedNow = await referencedKeys(storage, options.hosted);
  const now = options.now ?? Date.now;
  for (const item of found) {
    if (item.kind === "stale spool") {
      await Deno.remove(item.key, { recursive: true }).catch(() => {});
      removed.push(item);
      continue;
    }
    if (item.kind === "orphaned blob" && referencedNow.has(item.key)) continue;
    if (item.kind === "expired upload") {
      const keys: string[] = [];
      for await (const key of storage.list(item.key)) keys.push(key);
      // The info object last, as the hosted store does: a half-removed session still expires.
      keys.sort((a, b) => (a.endsWith("/info") ? 1 : 0) - (b.endsWith("/info") ? 1 : 0));
      for (const key of keys) await storage.delete(key);
      removed.push(item);
      continue;
    }
    const info = await storage.stat(item.key);
    if (!info || now() - info.modified.getTime() < options.minAgeMs) continue; // rewritten
    if (item.kind === "tag link to a missing manifest") {
      const digest = parseLinkDigest(await storage.readBytes(item.key));
      if (digest && await storage.stat(manifestKey(digest))) continue; // its manifest is back
    }
    await storage.delete(item.key);
    removed.push(item);
  }
  return { found, removed, bytes: sum(removed) };
}

/** What a collection would remove, without removing anything. */
export async function findGarbage(options: GcOptions): Promise<Garbage[]> {
  const { storage, minAgeMs } = options;
  const now = options.now ?? Date.now;
  const old = (modified: Date) => now() - modified.getTime() >= minAgeMs;
  const garbage: Garbage[] = [];

  const referenced = await referencedKeys(storage, options.hosted);
  for await (const key of storage.list("blobs/")) {
    if (!digestOfKey(key) || referenced.has(key)) continue;
    const info = await storage.stat(key);
    if (info && old(info.modified)) garbage.push({ kind: "orphaned blob", key, bytes: info.size });
  }

  for await (const key of storage.list("repositories/")) {
    if (!key.includes("/_tags/")) continue;
    const digest = parseLinkDigest(await storage.readBytes(key));
    if (digest && await storage.stat(manifestKey(digest))) continue;
    const info = await storage.stat(key);
    if (info && old(info.modified)) {
      garbage.push({ kind: "tag link to a missing manifest", key, bytes: info.size });
    }
  }

  const sessions = new Map<string, { bytes: number; newest: number; touched?: number }>();
  for await (const key of storage.list(UPLOADS_PREFIX)) {
    const id = key.slice(UPLOADS_PREFIX.length).split("/")[0];
    const info = await storage.stat(key);
    if (!info) continue;
    const session = sessions.get(id) ?? { bytes: 0, newest: 0 };
    session.bytes += info.size;
    session.newest = Math.max(session.newest, info.modified.getTime());
    if (key.endsWith("/info")) {
      try {
        const touched = JSON.parse(
          new TextDecoder().decode(await storage.readBytes(key) ?? new Uint8Array()),
        )?.touched;
        if (typeof touched === "number") session.touched = touched;
      } catch { /* a damaged info: judged by the objects' age alone */ }
    }
    sessions.set(id, session);
  }
  for (const [id, session] of sessions) {
    const touched = session.touched ?? session.newest;
    if (
      now() - touched >= options.uploadExpiryMs &&
      now() - session.newest >= Math.min(minAgeMs, options.uploadExpiryMs)
    ) {
      garbage.push({ kind: "expired upload", key: uploadPrefix(id), bytes: session.bytes });
    }
  }

  for (const spool of options.spools ?? []) {
    let entries: Deno.DirEntry[] = [];
    try {
      entries = [...Deno.readDirSync(spool.dir)];
    } catch { /* no spool directory: nothing left behind */ }
    for (const entry of entries) {
      if (spool.keep?.(entry.name)) continue;
      const path = `${spool.dir}/${entry.name}`;
      const info = await Deno.stat(path).catch(() => null);
      if (!info?.mtime || now() - info.mtime.getTime() < spool.maxAgeMs) continue;
      garbage.push({ kind: "stale spool", key: path, bytes: info.isFile ? info.size : 0 });
    }
  }
  return garbage;
}

/**
 * Every blob and manifest key something keeps: referenced by any stored manifest (mirrored or
 * hosted), or linked by a hosted repository (a pushed blob whose manifest is not pushed yet).
 */
async function referencedKeys(storage: Storage, hosted: string[]): Promise<Set<string>> {
  const keys = new Set<string>();
  for await (const key of storage.list("manifests/")) {
    const bytes = digestOfKey(key) ? await storage.readBytes(key) : null;
    if (!bytes) continue;
    const { blobs, manifests } = manifestReferences(bytes);
    for (const digest of blobs) keys.add(blobKey(digest));
    for (const digest of manifests) keys.add(manifestKey(digest));
  }
  for (const namespace of hosted) {
    for await (const key of storage.list(hostedPrefix(namespace))) {
      const link = /\/_blobs\/([a-z0-9]+)\/([a-f0-9]+)$/.exec(key);
      const digest = link ? `${link[1]}:${link[2]}` : "";
      if (isDigest(digest)) keys.add(blobKey(digest));
    }
  }
  return keys;
}

function sum(items: Garbage[]): number {
  return items.reduce((total, item) => total + item.bytes, 0);
}

/** The report as `oci-registry gc` prints it: one line per object, then the total. */
export function formatReport(report: GcReport, removing: boolean): string {
  const items = removing ? report.removed : report.found;
  const verb = removing ? "removed" : "would remove";
  const lines = items.map((item) => `${verb} ${item.kind}: ${item.key} (${item.bytes} bytes)`);
  lines.push(
    `${items.length} object(s), ${report.bytes} bytes ${removing ? "freed" : "would be freed"}${
      removing ? "" : " (dry run: --delete removes them)"
    }`,
  );
  return lines.join("\n");
}
