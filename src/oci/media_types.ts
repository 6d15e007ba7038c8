/** Manifest media types, and how to tell which one a stored manifest is. */

export const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
export const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
export const DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json";
export const DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json";
export const DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json";
export const DOCKER_MANIFEST_V1_SIGNED =
  "application/vnd.docker.distribution.manifest.v1+prettyjws";

/** What the mirror asks upstream for: everything it can cache and serve. */
export const ALL_MANIFEST_TYPES = [
  OCI_INDEX,
  OCI_MANIFEST,
  DOCKER_MANIFEST_LIST,
  DOCKER_MANIFEST,
  DOCKER_MANIFEST_V1_SIGNED,
  DOCKER_MANIFEST_V1,
];

export function isIndexType(mediaType: string): boolean {
  return mediaType === OCI_INDEX || mediaType === DOCKER_MANIFEST_LIST;
}

/** Largest manifest accepted from upstream (distribution uses 4 MiB too). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/**
 * The media type of manifest bytes: the `mediaType` field when present (Docker always sets it,
 * OCI usually does), else inferred from the shape as the OCI spec allows.
 */
export function detectManifestMediaType(bytes: Uint8Array, fallback?: string): string | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return undefined;
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return undefined;
  const doc = parsed as Record<string, unknown>;
  if (typeof doc.mediaType === "string" && doc.mediaType.length > 0) return doc.mediaType;
  if (doc.schemaVersion === 1) {
    return "signatures" in doc ? DOCKER_MANIFEST_V1_SIGNED : DOCKER_MANIFEST_V1;
  }
  if (Array.isArray(doc.manifests)) return OCI_INDEX;
  if (typeof doc.config === "object" || Array.isArray(doc.layers)) return OCI_MANIFEST;
  return fallback;
}

/** Parses an Accept header into media types (ignoring q-values, which registries ignore too). */
export function parseAccept(values: string | null): string[] {
  if (!values) return [];
  return values.split(",").map((part) => part.split(";")[0].trim().toLowerCase()).filter(
    (type) => type.length > 0,
  );
}

/**
 * Whether a client that sent `accept` can take `mediaType`. No Accept header, or a wildcard,
 * means anything; Docker schema 1 and OCI manifests are acceptable to clients that list none
 * of the manifest types (old clients), matching what registries do.
 */
export function acceptsMediaType(accept: string[], mediaType: string): boolean {
  if (accept.length === 0 || accept.includes("*/*")) return true;
  if (accept.includes(mediaType)) return true;
  const listsManifestTypes = accept.some((type) => ALL_MANIFEST_TYPES.includes(type));
  return !listsManifestTypes;
}

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface IndexEntry {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform;
}

/** The child entries of an OCI index or Docker manifest list. */
export function indexEntries(bytes: Uint8Array): IndexEntry[] {
  try {
    const doc = JSON.parse(new TextDecoder().decode(bytes));
    return Array.isArray(doc.manifests) ? doc.manifests : [];
  } catch {
    return [];
  }
}
