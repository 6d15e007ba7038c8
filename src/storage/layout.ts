/**
 * Where things live in a storage back-end. The same layout is used on disk and in S3, so a
 * bucket can be copied to a directory and back.
 *
 *   blobs/sha256/ab/abcdef...                         blob bytes (content-addressed, shared)
 *   manifests/sha256/ab/abcdef...                     manifest bytes (content-addressed, shared)
 *   repositories/<namespace>/<repository>/_tags/<tag> tag link: JSON TagLink
 *   cache/access/<process id>                         last reads of mirrored content (JSON)
 *   repositories/<namespace>/<repository>/_content/<alg>/<hex>  this repository holds it
 */
import { isDigest, parseDigest } from "../oci/digest.ts";

/** Access times of mirrored content, one JSON object per process (mirror/bound.ts). */
export const ACCESS_TIMES_PREFIX = "cache/access/";

/** Never written: GET /readyz asks for it to prove the store answers at all. */
export const READINESS_PROBE_KEY = "readiness-probe";

export function blobKey(digest: string): string {
  const d = parseDigest(digest);
  return `blobs/${d.algorithm}/${d.hex.slice(0, 2)}/${d.hex}`;
}

export function manifestKey(digest: string): string {
  const d = parseDigest(digest);
  return `manifests/${d.algorithm}/${d.hex.slice(0, 2)}/${d.hex}`;
}

/** `blobs/sha256/ab/abcd...` -> `sha256:abcd...`, or null for anything else. */
export function digestOfKey(key: string): string | null {
  const parts = key.split("/");
  if (parts.length !== 4) return null;
  const digest = `${parts[1]}:${parts[3]}`;
  return isDigest(digest) ? digest : null;
}

/** The digest a tag link (TagLink JSON) names, or null for a damaged link. */
export function parseLinkDigest(bytes: Uint8Array | null): string | null {
  if (!bytes) return null;
  try {
    const digest = JSON.parse(new TextDecoder().decode(bytes))?.digest;
    return typeof digest === "string" && isDigest(digest) ? digest : null;
  } catch {
    return null;
  }
}

/** Namespace, repository and tag must already be validated by oci/reference.ts. */
export function repositoryPrefix(namespace: string, repository: string): string {
  return `repositories/${namespace}/${repository}/`;
}

export function tagKey(namespace: string, repository: string, tag: string): string {
  return `${repositoryPrefix(namespace, repository)}_tags/${tag}`;
}

/** A mirrored repository's whole tag list as upstream last gave it (its JSON body). */
export function tagListKey(namespace: string, repository: string): string {
  return `${repositoryPrefix(namespace, repository)}_tags_list`;
}

/** The referrers of a mirrored manifest as last listed by upstream (JSON descriptors). */
export function mirroredReferrersKey(namespace: string, repository: string, digest: string) {
  const d = parseDigest(digest);
  return `${repositoryPrefix(namespace, repository)}_referrers_index/${d.algorithm}/${d.hex}`;
}

/**
 * A mirrored repository holds this blob or manifest: it came from upstream for this repository
 * (named by a manifest fetched for it, or confirmed with a HEAD). Empty; its existence is all.
 */
export function mirroredLinkKey(namespace: string, repository: string, digest: string) {
  const d = parseDigest(digest);
  return `${repositoryPrefix(namespace, repository)}_content/${d.algorithm}/${d.hex}`;
}

/** What a tag pointed at when last confirmed with upstream (or pushed). */
export interface TagLink {
  digest: string;
  mediaType: string;
  size: number;
  /** Milliseconds since the epoch when upstream last confirmed this digest for the tag. */
  confirmedAt: number;
}

/*
 * Hosted repositories (registry/local.ts), under the repository's full OCI name:
 *
 *   repositories/<name>/_blobs/<alg>/<hex>                 blob link: this repository may serve it
 *   repositories/<name>/_manifests/<alg>/<hex>             manifest link: JSON ManifestLink
 *   repositories/<name>/_tags/<tag>                        tag link: JSON TagLink
 *   repositories/<name>/_referrers/<alg>/<hex>/<alg>-<hex> referrer of a subject: JSON descriptor
 *   uploads/<id>/info                                      upload session: JSON UploadInfo
 *   uploads/<id>/<offset>                                  a received chunk (offset zero-padded)
 *
 * Names and tags cannot contain "_"-led components, so these never collide with a repository.
 */
export function hostedPrefix(name: string): string {
  return `repositories/${name}/`;
}

export function blobLinkKey(name: string, digest: string): string {
  const d = parseDigest(digest);
  return `${hostedPrefix(name)}_blobs/${d.algorithm}/${d.hex}`;
}

export function manifestLinkKey(name: string, digest: string): string {
  const d = parseDigest(digest);
  return `${hostedPrefix(name)}_manifests/${d.algorithm}/${d.hex}`;
}

export function hostedTagKey(name: string, tag: string): string {
  return `${hostedPrefix(name)}_tags/${tag}`;
}

export function referrersPrefix(name: string, subject: string): string {
  const d = parseDigest(subject);
  return `${hostedPrefix(name)}_referrers/${d.algorithm}/${d.hex}/`;
}

export function referrerKey(name: string, subject: string, digest: string): string {
  const d = parseDigest(digest);
  return `${referrersPrefix(name, subject)}${d.algorithm}-${d.hex}`;
}

export const UPLOADS_PREFIX = "uploads/";

export function uploadPrefix(id: string): string {
  return `${UPLOADS_PREFIX}${id}/`;
}

export function uploadChunkKey(id: string, offset: number): string {
  return `${uploadPrefix(id)}${String(offset).padStart(16, "0")}`;
}

/** What a manifest link records: the type to answer with (the bytes are content-addressed). */
export interface ManifestLink {
  mediaType: string;
  size: number;
}
