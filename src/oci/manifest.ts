/**
 * Parsing and validating pushed manifests (OCI image manifest and index, Docker schema 2 and
 * manifest list). Only structure is checked here; whether referenced content exists is the
 * registry's business (registry/local.ts).
 */
import { isDigest } from "./digest.ts";
import { RegistryError } from "./errors.ts";
import {
  DOCKER_MANIFEST,
  DOCKER_MANIFEST_LIST,
  MAX_MANIFEST_BYTES,
  OCI_INDEX,
  OCI_MANIFEST,
} from "./media_types.ts";
import type { Descriptor } from "../registry/registry.ts";

/** Media types a push may use. */
export const PUSHABLE_MANIFEST_TYPES = [
  OCI_MANIFEST,
  OCI_INDEX,
  DOCKER_MANIFEST,
  DOCKER_MANIFEST_LIST,
];

/** Layers a registry does not have to hold (Windows foreign layers): pushed with `urls`. */
const NON_DISTRIBUTABLE = /\.(?:nondistributable|foreign)\./;

export interface ParsedManifest {
  mediaType: string;
  /** The config blob of an image manifest. */
  config?: Descriptor;
  /** Layers that the registry should hold (foreign layers left out). */
  layers: Descriptor[];
  /** Child manifests that must be present (index entries). */
  manifests: Descriptor[];
  subject?: Descriptor;
  /** artifactType, else the config's media type (for the referrers API). */
  artifactType?: string;
  annotations?: Record<string, string>;
}

function invalid(message: string): RegistryError {
  return new RegistryError("MANIFEST_INVALID", message);
}

function descriptor(value: unknown, where: string): Descriptor {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw invalid(`${where} is not a descriptor`);
  }
  const d = value as Record<string, unknown>;
  if (typeof d.mediaType !== "string" || d.mediaType === "") {
    throw invalid(`${where}.mediaType is missing`);
  }
  if (typeof d.digest !== "string" || !isDigest(d.digest)) {
    throw invalid(`${where}.digest is not a valid digest`);
  }
  if (typeof d.size !== "number" || !Number.isSafeInteger(d.size) || d.size < 0) {
    throw invalid(`${where}.size is not a size`);
  }
  const result: Descriptor = { mediaType: d.mediaType, digest: d.digest, size: d.size };
  if (typeof d.artifactType === "string") result.artifactType = d.artifactType;
  if (isAnnotations(d.annotations)) result.annotations = d.annotations;
  if (Array.isArray(d.urls) && d.urls.length > 0) (result as { urls?: unknown }).urls = d.urls;
  return result;
}

function isAnnotations(value: unknown): value is Record<string, string> {
  return typeof value === "object" && value !== null && !Array.isArray(value) &&
    Object.values(value).every((v) => typeof v === "string");
}

/**
 * The manifest's structure, or MANIFEST_INVALID (400) / 413 for too large. `contentType` is
 * the request's Content-Type; a `mediaType` field in the body must agree with it.
 */
export function parseManifest(bytes: Uint8Array, contentType: string | null): ParsedManifest {
  if (bytes.byteLength > MAX_MANIFEST_BYTES) {
    throw new RegistryError(
      "MANIFEST_INVALID",
      `manifest larger than ${MAX_MANIFEST_BYTES} bytes`,
      { status: 413 },
    );
  }
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw invalid("manifest is not valid JSON");
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    throw invalid("manifest is not a JSON object");
  }
  const m = doc as Record<string, unknown>;
  const declared = typeof m.mediaType === "string" ? m.mediaType : undefined;
  const header = contentType?.split(";")[0].trim().toLowerCase() || undefined;
  if (declared !== undefined && header !== undefined && declared !== header) {
    throw invalid(`Content-Type ${header} does not match the manifest's mediaType ${declared}`);
  }
  const mediaType = declared ?? header ??
    (Array.isArray(m.manifests) ? OCI_INDEX : OCI_MANIFEST);
  if (!PUSHABLE_MANIFEST_TYPES.includes(mediaType)) {
    throw invalid(`unsupported manifest media type ${mediaType}`);
  }
  if (m.schemaVersion !== 2) throw invalid("schemaVersion must be 2");
  const result: ParsedManifest = { mediaType, layers: [], manifests: [] };
  if (mediaType === OCI_INDEX || mediaType === DOCKER_MANIFEST_LIST) {
    if (!Array.isArray(m.manifests)) throw invalid("an index needs a manifests array");
    result.manifests = m.manifests.map((d, i) => descriptor(d, `manifests[${i}]`));
    if (typeof m.artifactType === "string") result.artifactType = m.artifactType;
  } else {
    const config = descriptor(m.config, "config");
    if (m.layers !== undefined && !Array.isArray(m.layers)) throw invalid("layers is not a list");
    const layers = ((m.layers ?? []) as unknown[]).map((d, i) => descriptor(d, `layers[${i}]`));
    // Foreign layers live elsewhere (their urls) by design; everything else must be here.
    result.config = config;
    result.layers = layers.filter((d) => !(NON_DISTRIBUTABLE.test(d.mediaType) && "urls" in d));
    result.artifactType = typeof m.artifactType === "string" ? m.artifactType : config.mediaType;
  }
  if (m.subject !== undefined) result.subject = descriptor(m.subject, "subject");
  if (isAnnotations(m.annotations)) result.annotations = m.annotations;
  return result;
}

/**
 * Every digest a manifest of any kind names (config, layers, index entries, schema 1
 * `fsLayers`), leniently: upstream manifests are not validated like pushed ones. Empty for
 * bytes that are not a JSON object.
 */
export function referencedDigests(bytes: Uint8Array): string[] {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return [];
  }
  if (typeof doc !== "object" || doc === null) return [];
  const digests: string[] = [];
  const add = (value: unknown, field = "digest") => {
    const digest = (value as Record<string, unknown> | null)?.[field];
    if (typeof digest === "string" && isDigest(digest)) digests.push(digest);
  };
  add(doc.config);
  for (const list of [doc.layers, doc.manifests, doc.blobs]) {
    if (Array.isArray(list)) list.forEach((entry) => add(entry));
  }
  if (Array.isArray(doc.fsLayers)) doc.fsLayers.forEach((entry) => add(entry, "blobSum"));
  return digests;
}

/**
 * What a stored manifest references, by kind, leniently like `referencedDigests`: blobs (config,
 * layers, artifact blobs, schema 1 `fsLayers`) and child manifests (index entries).
 */
export function manifestReferences(bytes: Uint8Array): { blobs: string[]; manifests: string[] } {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return { blobs: [], manifests: [] };
  }
  if (typeof doc !== "object" || doc === null) return { blobs: [], manifests: [] };
  const digests = (items: unknown, field = "digest") =>
    (Array.isArray(items) ? items : []).map((item) => item?.[field]).filter(
      (digest): digest is string => typeof digest === "string" && isDigest(digest),
    );
  return {
    blobs: [
      ...new Set([
        ...digests([doc.config]),
        ...digests(doc.layers),
        ...digests(doc.blobs),
        ...digests(doc.fsLayers, "blobSum"),
      ]),
    ],
    manifests: [...new Set(digests(doc.manifests))],
  };
}
