/**
 * Where things live in a storage back-end. The same layout is used on disk and in S3, so a
 * bucket can be copied to a directory and back.
 *
 *   blobs/sha256/ab/abcdef...                         blob bytes (content-addressed, shared)
 *   manifests/sha256/ab/abcdef...                     manifest bytes (content-addressed, shared)
 *   repositories/<namespace>/<repository>/_tags/<tag> tag link: JSON TagLink
 */
import { parseDigest } from "../digest.ts";

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

/** Namespace, repository and tag must already be validated by oci/reference.ts. */
export function repositoryPrefix(namespace: string, repository: string): string {
  return `repositories/${namespace}/${repository}/`;
}

export function tagKey(namespace: string, repository: string, tag: string): string {
  return `${repositoryPrefix(namespace, repository)}_tags/${tag}`;
}

/** What a tag pointed at when last confirmed with upstream (or pushed). */
export interface TagLink {
  digest: string;
  mediaType: string;
  size: number;
  /** Milliseconds since the epoch when upstream last confirmed this digest for the tag. */
  confirmedAt: number;
}
