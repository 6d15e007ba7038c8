/**
 * Warm lists: images the mirror keeps cached before any node asks, so the first pull of a new
 * node (or of a pod scheduled during an upstream outage) is served from cache. One walker
 * visits an image the way a client pulls it (the manifest or index, the chosen platforms'
 * manifests, their config and layers) through an `ImageSource`: the mirror itself for the
 * warm lists in the upstream file (refreshed on an interval), or a running mirror over HTTP
 * for `oci-registry warm IMAGE...`.
 */
import { parseDigest } from "../oci/digest.ts";
import { RegistryError } from "../oci/errors.ts";
import { ALL_MANIFEST_TYPES, indexEntries, isIndexType } from "../oci/media_types.ts";
import type { UpstreamConfig, WarmImage } from "../config/upstreams.ts";
import type { LogFn } from "../runtime/log.ts";
import type { Mirror } from "./mirror.ts";

/** Where the walker gets manifests and blobs from. */
export interface ImageSource {
  manifest(
    repository: string,
    reference: string,
  ): Promise<{ mediaType: string; bytes: Uint8Array }>;
  /** Makes sure the blob is cached; resolves to the bytes that had to be fetched (0: cached). */
  blob(repository: string, digest: string): Promise<number>;
}

export interface WarmResult {
  manifests: number;
  blobs: number;
  /** Bytes of blobs that were not cached yet. */
  fetchedBytes: number;
}

/** An index inside an index inside an index is as deep as real images go. */
const MAX_DEPTH = 3;

export async function warmImage(source: ImageSource, image: WarmImage): Promise<WarmResult> {
  const result: WarmResult = { manifests: 0, blobs: 0, fetchedBytes: 0 };
  const seenBlobs = new Set<string>();
  const visit = async (reference: string, depth: number): Promise<void> => {
    const manifest = await source.manifest(image.repository, reference);
    result.manifests++;
    if (isIndexType(manifest.mediaType)) {
      if (depth >= MAX_DEPTH) return;
      for (const entry of indexEntries(manifest.bytes)) {
        if (!wanted(entry.platform, image.platforms)) continue;
        await visit(entry.digest, depth + 1);
      }
      return;
    }
    for (const digest of blobsOf(manifest.bytes)) {
      if (seenBlobs.has(digest)) continue;
      seenBlobs.add(digest);
      result.fetchedBytes += await source.blob(image.repository, digest);
      result.blobs++;
    }
  };
  await visit(image.reference, 0);
  return result;
}

/** Whether an index entry's platform is one of `platforms` (all are, when none are chosen). */
function wanted(
  platform: { os?: string; architecture?: string; variant?: string } | undefined,
  platforms: string[] | undefined,
): boolean {
  if (!platforms) return true;
  if (!platform?.os || !platform.architecture) return false; // attestations and the like
  return platforms.some((p) => {
    const [os, architecture, variant] = p.split("/");
    return os === platform.os && architecture === platform.architecture &&
      (variant === undefined || variant === platform.variant);
  });
}

/** The config and layer digests of an image manifest (foreign layers with URLs included). */
function blobsOf(bytes: Uint8Array): string[] {
  let document: { config?: { digest?: unknown }; layers?: { digest?: unknown }[] };
  try {
    document = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new RegistryError("MANIFEST_INVALID", "the manifest to warm is not JSON");
  }
  const digests = [document.config?.digest, ...(document.layers ?? []).map((l) => l?.digest)];
  return digests.filter((d): d is string => {
    if (typeof d !== "string") return false;
    parseDigest(d); // throws DIGEST_INVALID for garbage
    return true;
  });
}

/** The mirror as an image source: what warming fetches is cached like any pull. */
export function mirrorSource(mirror: Mirror, namespace: string): ImageSource {
  return {
    // A warm pass is a refresh: a tag is checked with upstream whatever its age.
    manifest: (repository, reference) =>
      mirror.getManifest(namespace, repository, reference, ALL_MANIFEST_TYPES, { refresh: true }),
    blob: (repository, digest) => mirror.prefetchBlob(namespace, repository, digest),
  };
}

/** How often a warm list is refreshed when `warm_interval` does not say. */
export const DEFAULT_WARM_INTERVAL_MS = 6 * 3_600_000;

/**
 * Keeps the warm lists of the upstream file cached: each namespace's list right after start,
 * then every `warm_interval`, one image at a time (warming is background work: it should not
 * compete with pulls). Failures are logged and retried at the next pass.
 */
export function startWarming(
  mirror: Mirror,
  upstreams: UpstreamConfig[],
  log: LogFn,
): { stop(): void } {
  const timers: ReturnType<typeof setInterval>[] = [];
  let stopped = false;
  for (const upstream of upstreams) {
    const images = upstream.warm;
    if (!images || images.length === 0) continue;
    let running = false;
    const pass = async () => {
      if (running || stopped) return; // a slow pass is not stacked on
      running = true;
      try {
        for (const image of images) {
          if (stopped) return;
          const name = `${upstream.namespace}/${image.repository}:${image.reference}`
            .replace(/:(sha\d+:)/, "@$1");
          const started = performance.now();
          try {
            const result = await warmImage(mirrorSource(mirror, upstream.namespace), image);
            log(`warm: ${name}: ${describeWarm(result, performance.now() - started)}`);
          } catch (e) {
            log(`warm: ${name} failed: ${(e as Error)?.message ?? e}`, "warn");
          }
        }
      } finally {
        running = false;
      }
    };
    setTimeout(pass, 0);
    const timer = setInterval(pass, upstream.warmIntervalMs ?? DEFAULT_WARM_INTERVAL_MS);
    Deno.unrefTimer(timer);
    timers.push(timer);
  }
  return {
    stop() {
      stopped = true;
      for (const timer of timers) clearInterval(timer);
    },
  };
}

export function describeWarm(result: WarmResult, ms: number): string {
  const mb = (result.fetchedBytes / 1e6).toFixed(1);
  return `${result.manifests} manifest(s), ${result.blobs} blob(s), ${mb} MB fetched in ${
    (ms / 1000).toFixed(1)
  } s`;
}

/**
 * A running mirror over HTTP as an image source (`oci-registry warm`): every request goes
 * through it, so what it lacks it fetches and caches; blobs are read and dropped.
 */
export function httpSource(
  mirrorUrl: string,
  registry: string,
  /** An Authorization header for a mirror with --auth-config (Basic works on every request). */
  authorization?: string,
): ImageSource {
  const base = `${mirrorUrl.replace(/\/+$/, "")}/v2/${registry}`;
  const get = async (path: string, accept?: string) => {
    const headers: Record<string, string> = accept ? { accept } : {};
    if (authorization) headers.authorization = authorization;
    const response = await fetch(`${base}/${path}`, { headers });
    if (!response.ok) {
      const text = await response.text();
      let message = text.slice(0, 200);
      try {
        message = JSON.parse(text).errors?.[0]?.message ?? message;
      } catch { /* not JSON */ }
      throw new RegistryError("UNAVAILABLE", `${path}: ${response.status} ${message}`);
    }
    return response;
  };
  return {
    async manifest(repository, reference) {
      const response = await get(
        `${repository}/manifests/${reference}`,
        ALL_MANIFEST_TYPES.join(", "),
      );
      const bytes = new Uint8Array(await response.arrayBuffer());
      return { mediaType: response.headers.get("content-type")?.split(";")[0] ?? "", bytes };
    },
    async blob(repository, digest) {
      const response = await get(`${repository}/blobs/${digest}`);
      let bytes = 0;
      for await (const chunk of response.body ?? []) bytes += chunk.byteLength;
      return bytes;
    },
  };
}
