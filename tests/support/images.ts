/**
 * Test images built offline, by hand: valid tar (optionally gzip) layers of random content, a
 * config whose `rootfs.diff_ids` are right (containerd and podman check them when unpacking), an
 * OCI or Docker schema 2 manifest, and an OCI index or Docker manifest list for several
 * platforms. Every build is unique (random bytes plus a nonce), so digests never collide across
 * tests.
 *
 * Push them to a registry over HTTP (`pushImage`), or write an OCI image layout (`writeOciLayout`)
 * and push that with skopeo (`skopeoPush`).
 */
import { concatBytes } from "../../src/runtime/bytes.ts";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { gzipSync } from "node:zlib";
import { assertEquals } from "./assert.ts";
import { RegistryClient } from "./registry_client.ts";
import { run, type RunResult, sha256File } from "./tools.ts";

export const MediaTypes = {
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  ociLayer: "application/vnd.oci.image.layer.v1.tar",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerManifestList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerLayerGzip: "application/vnd.docker.image.rootfs.diff.tar.gzip",
  dockerLayer: "application/vnd.docker.image.rootfs.diff.tar",
} as const;

export type ImageFormat = "oci" | "docker";

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export const LINUX_AMD64: Platform = { os: "linux", architecture: "amd64" };
export const LINUX_ARM64: Platform = { os: "linux", architecture: "arm64" };

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: Platform;
  annotations?: Record<string, string>;
  artifactType?: string;
}

/** Content with its descriptor fields. `sha256` is the hex part of `digest`. */
export interface Blob {
  mediaType: string;
  digest: string;
  sha256: string;
  size: number;
  bytes: Uint8Array<ArrayBuffer>;
}

export interface Layer extends Blob {
  /** Digest of the uncompressed tar (equals `digest` for uncompressed layers). */
  diffId: string;
  compressed: boolean;
  /** The regular files in the tar, with their content's sha256 (hex). */
  files: { path: string; size: number; sha256: string }[];
}

export interface Image {
  kind: "image";
  format: ImageFormat;
  platform: Platform;
  /** The manifest blob; `digest` below is its digest. */
  manifest: Blob;
  /** The manifest's parsed JSON. */
  manifestJson: Record<string, unknown>;
  digest: string;
  mediaType: string;
  config: Blob;
  layers: Layer[];
}

export interface Index {
  kind: "index";
  format: ImageFormat;
  /** The index / manifest list blob; `digest` below is its digest. */
  manifest: Blob;
  manifestJson: Record<string, unknown>;
  digest: string;
  mediaType: string;
  images: Image[];
}

export interface LayerSpec {
  /** Bytes of random content in `harness/layer-N.bin`. Default 4096. */
  size?: number;
  /** Extra files (path -> content) in this layer. */
  files?: Record<string, string | Uint8Array>;
  /** Default true (Docker schema 2 layers are always gzip). */
  gzip?: boolean;
}

export interface ImageOptions {
  format?: ImageFormat;
  platform?: Platform;
  /** Number of layers (each `layerSize` random bytes) or one spec per layer. Default 2. */
  layers?: number | LayerSpec[];
  /** Random bytes per layer when `layers` is a number. Default 4096. */
  layerSize?: number;
  /** gzip layers (default true; ignored for Docker format, which is always gzip). */
  gzip?: boolean;
  /** Image config labels. */
  labels?: Record<string, string>;
  /** Manifest annotations (OCI only). */
  annotations?: Record<string, string>;
  /** OCI `subject` (referrers tests; distribution 2.8.2 stores it but has no referrers API). */
  subject?: Descriptor;
  /** OCI `artifactType`. */
  artifactType?: string;
}

export interface IndexOptions extends Omit<ImageOptions, "platform"> {
  /** Default linux/amd64 and linux/arm64. */
  platforms?: Platform[];
  /** Index annotations (OCI only). */
  indexAnnotations?: Record<string, string>;
}

// ---------------------------------------------------------------------------------------------
// Building

export function makeBlob(mediaType: string, bytes: Uint8Array<ArrayBuffer>): Blob {
  const sha256 = createHash("sha256").update(bytes).digest("hex");
  return { mediaType, digest: `sha256:${sha256}`, sha256, size: bytes.byteLength, bytes };
}

export function descriptorOf(blob: Blob, extra: Partial<Descriptor> = {}): Descriptor {
  return { mediaType: blob.mediaType, digest: blob.digest, size: blob.size, ...extra };
}

function jsonBlob(mediaType: string, value: unknown): Blob {
  return makeBlob(mediaType, new TextEncoder().encode(JSON.stringify(value)));
}

/** Builds one single-platform image. */
export function buildImage(opts: ImageOptions = {}): Image {
  const format = opts.format ?? "oci";
  const platform = opts.platform ?? LINUX_AMD64;
  const specs: LayerSpec[] = typeof opts.layers === "object"
    ? opts.layers
    : Array.from({ length: opts.layers ?? 2 }, () => ({ size: opts.layerSize ?? 4096 }));
  const nonce = randomUUID();
  const layers = specs.map((spec, index) =>
    buildLayer(format, index, nonce, {
      ...spec,
      gzip: format === "docker" ? true : spec.gzip ?? opts.gzip ?? true,
    })
  );
  const created = "2024-01-01T00:00:00Z";
  const configJson: Record<string, unknown> = {
    created,
    architecture: platform.architecture,
    os: platform.os,
    ...(platform.variant ? { variant: platform.variant } : {}),
    config: {
      Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
      Cmd: ["/bin/sh"],
      Labels: { "test.oci-registry.nonce": nonce, ...opts.labels },
    },
    rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffId) },
    history: layers.map((_, i) => ({
      created,
      created_by: `oci-registry test harness layer ${i}`,
    })),
  };
  const config = jsonBlob(
    format === "oci" ? MediaTypes.ociConfig : MediaTypes.dockerConfig,
    configJson,
  );
  const mediaType = format === "oci" ? MediaTypes.ociManifest : MediaTypes.dockerManifest;
  const manifestJson: Record<string, unknown> = {
    schemaVersion: 2,
    mediaType,
    ...(opts.artifactType && format === "oci" ? { artifactType: opts.artifactType } : {}),
    config: descriptorOf(config),
    layers: layers.map((l) => descriptorOf(l)),
    ...(opts.subject && format === "oci" ? { subject: opts.subject } : {}),
    ...(opts.annotations && format === "oci" ? { annotations: opts.annotations } : {}),
  };
  const manifest = jsonBlob(mediaType, manifestJson);
  return {
    kind: "image",
    format,
    platform,
    manifest,
    manifestJson,
    digest: manifest.digest,
    mediaType,
    config,
    layers,
  };
}

/** Builds a multi-platform image: an OCI index or a Docker manifest list over one image each. */
export function buildIndex(opts: IndexOptions = {}): Index {
  const format = opts.format ?? "oci";
  const platforms = opts.platforms ?? [LINUX_AMD64, LINUX_ARM64];
  const images = platforms.map((platform) => buildImage({ ...opts, platform }));
  const mediaType = format === "oci" ? MediaTypes.ociIndex : MediaTypes.dockerManifestList;
  const manifestJson: Record<string, unknown> = {
    schemaVersion: 2,
    mediaType,
    manifests: images.map((image) => descriptorOf(image.manifest, { platform: image.platform })),
    ...(opts.indexAnnotations && format === "oci" ? { annotations: opts.indexAnnotations } : {}),
  };
  const manifest = jsonBlob(mediaType, manifestJson);
  return {
    kind: "index",
    format,
    manifest,
    manifestJson,
    digest: manifest.digest,
    mediaType,
    images,
  };
}

function buildLayer(format: ImageFormat, index: number, nonce: string, spec: LayerSpec): Layer {
  const entries: TarEntry[] = [{ path: "harness/", type: "dir" }];
  entries.push({
    path: `harness/layer-${index}.txt`,
    type: "file",
    data: new TextEncoder().encode(`oci-registry test layer ${index} of image ${nonce}\n`),
  });
  entries.push({
    path: `harness/layer-${index}.bin`,
    type: "file",
    data: new Uint8Array(randomBytes(spec.size ?? 4096)),
  });
  for (const [path, content] of Object.entries(spec.files ?? {})) {
    const clean = path.replace(/^\/+/, "");
    const parts = clean.split("/");
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join("/") + "/";
      if (!entries.some((e) => e.path === dir)) entries.push({ path: dir, type: "dir" });
    }
    entries.push({
      path: clean,
      type: "file",
      data: typeof content === "string"
        ? new TextEncoder().encode(content)
        : new Uint8Array(content),
    });
  }
  const tar = makeTar(entries);
  const diffId = `sha256:${createHash("sha256").update(tar).digest("hex")}`;
  const gzip = spec.gzip ?? true;
  const mediaType = format === "oci"
    ? (gzip ? MediaTypes.ociLayerGzip : MediaTypes.ociLayer)
    : (gzip ? MediaTypes.dockerLayerGzip : MediaTypes.dockerLayer);
  const bytes = gzip ? new Uint8Array(gzipSync(tar, { level: 1 })) : tar;
  const files = entries.filter((e) => e.type === "file").map((e) => ({
    path: e.path,
    size: e.data!.byteLength,
    sha256: createHash("sha256").update(e.data!).digest("hex"),
  }));
  return { ...makeBlob(mediaType, bytes), diffId, compressed: gzip, files };
}

export interface TarEntry {
  /** Relative path; directories end with "/". */
  path: string;
  type: "file" | "dir";
  data?: Uint8Array<ArrayBuffer>;
  mode?: number;
}

/** A POSIX ustar archive of the entries (paths up to 255 bytes), ending in two zero blocks. */
export function makeTar(entries: TarEntry[]): Uint8Array<ArrayBuffer> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (const entry of entries) {
    const data = entry.type === "file" ? entry.data ?? new Uint8Array() : new Uint8Array();
    const header = tarHeader(entry, data.byteLength);
    chunks.push(header, data);
    total += header.byteLength + data.byteLength;
    const pad = (512 - (data.byteLength % 512)) % 512;
    if (pad) {
      chunks.push(new Uint8Array(pad));
      total += pad;
    }
  }
  chunks.push(new Uint8Array(1024));
  total += 1024;
  return concatBytes(chunks, total);
}

function tarHeader(entry: TarEntry, size: number): Uint8Array {
  const header = new Uint8Array(512);
  const encoder = new TextEncoder();
  const put = (text: string, offset: number, length: number) => {
    const bytes = encoder.encode(text);
    if (bytes.byteLength > length) throw new Error(`tar: "${text}" too long for its field`);
    header.set(bytes, offset);
  };
  const octal = (value: number, offset: number, length: number) =>
    put(value.toString(8).padStart(length - 1, "0") + "\0", offset, length);
  let name = entry.path;
  let prefix = "";
  if (encoder.encode(name).byteLength > 100) {
    const cut = name.lastIndexOf("/", name.length - 2);
    prefix = name.slice(0, cut);
    name = name.slice(cut + 1);
  }
  put(name, 0, 100);
  octal(entry.mode ?? (entry.type === "dir" ? 0o755 : 0o644), 100, 8);
  octal(0, 108, 8); // uid
  octal(0, 116, 8); // gid
  octal(size, 124, 12);
  octal(1_700_000_000, 136, 12); // mtime
  put("        ", 148, 8); // checksum placeholder
  put(entry.type === "dir" ? "5" : "0", 156, 1);
  put("ustar\0", 257, 6);
  put("00", 263, 2);
  put("root", 265, 32);
  put("root", 297, 32);
  put(prefix, 345, 155);
  let sum = 0;
  for (const byte of header) sum += byte;
  put(sum.toString(8).padStart(6, "0") + "\0 ", 148, 8);
  return header;
}

// ---------------------------------------------------------------------------------------------
// Inspecting

/** Every blob (configs and layers) an image or index refers to, without duplicates. */
export function blobsOf(image: Image | Index): Blob[] {
  const images = image.kind === "index" ? image.images : [image];
  const seen = new Map<string, Blob>();
  for (const img of images) {
    for (const blob of [img.config, ...img.layers]) seen.set(blob.digest, blob);
  }
  return [...seen.values()];
}

/** Every manifest blob (the index first, if any). */
export function manifestsOf(image: Image | Index): Blob[] {
  return image.kind === "index"
    ? [image.manifest, ...image.images.map((i) => i.manifest)]
    : [image.manifest];
}

/** The image for a platform in an index (or the image itself). */
export function imageFor(image: Image | Index, platform: Platform = LINUX_AMD64): Image {
  if (image.kind === "image") return image;
  const found = image.images.find((i) =>
    i.platform.os === platform.os && i.platform.architecture === platform.architecture
  );
  if (!found) throw new Error(`no image for ${platform.os}/${platform.architecture}`);
  return found;
}

// ---------------------------------------------------------------------------------------------
// Pushing over HTTP

/** Anything that can give a RegistryClient: an Upstream, or a client itself. */
export type PushTarget = RegistryClient | { client(): RegistryClient };

function clientOf(target: PushTarget): RegistryClient {
  return target instanceof RegistryClient ? target : target.client();
}

/** Uploads a blob (POST then PUT with the digest), unless the registry already has it. */
export async function pushBlob(target: PushTarget, repo: string, blob: Blob): Promise<void> {
  const client = clientOf(target);
  const head = await client.fetch(`/v2/${repo}/blobs/${blob.digest}`, { method: "HEAD" });
  await head.body?.cancel();
  if (head.status === 200) return;
  const location = await startUpload(client, repo);
  const url = new URL(location, client.target.url);
  url.searchParams.set("digest", blob.digest);
  const put = await client.expect(url.href, {
    method: "PUT",
    body: blob.bytes,
    headers: { "content-type": "application/octet-stream" },
  }, 201);
  await put.body?.cancel();
}

async function startUpload(client: RegistryClient, repo: string): Promise<string> {
  const post = await client.expect(`/v2/${repo}/blobs/uploads/`, { method: "POST" }, 202);
  await post.body?.cancel();
  const location = post.headers.get("location");
  if (!location) throw new Error(`POST /v2/${repo}/blobs/uploads/: no Location`);
  return location;
}

/** PUTs a manifest (index, list or image manifest) under `reference` (a tag or its digest). */
export async function pushManifest(
  target: PushTarget,
  repo: string,
  reference: string,
  manifest: Blob,
): Promise<void> {
  const response = await clientOf(target).expect(`/v2/${repo}/manifests/${reference}`, {
    method: "PUT",
    body: manifest.bytes,
    headers: { "content-type": manifest.mediaType },
  }, 201);
  await response.body?.cancel();
}

/**
 * Pushes an image or an index with everything it refers to; the top manifest is tagged `tag`
 * (pass undefined to push by digest only). Returns the image for chaining.
 */
export async function pushImage<T extends Image | Index>(
  target: PushTarget,
  repo: string,
  tag: string | undefined,
  image: T,
): Promise<T> {
  const client = clientOf(target);
  for (const blob of blobsOf(image)) await pushBlob(client, repo, blob);
  if (image.kind === "index") {
    for (const child of image.images) {
      await pushManifest(client, repo, child.digest, child.manifest);
    }
  }
  await pushManifest(client, repo, tag ?? image.digest, image.manifest);
  return image;
}

/** Deletes a manifest by digest on the registry (the upstream has deletes enabled). */
export async function deleteManifest(target: PushTarget, repo: string, digest: string) {
  const response = await clientOf(target).expect(
    `/v2/${repo}/manifests/${digest}`,
    { method: "DELETE" },
    202,
  );
  await response.body?.cancel();
}

export interface RandomBlob {
  digest: string;
  sha256: string;
  size: number;
}

/**
 * Streams `size` random bytes to the registry as one blob (POST, one chunked PATCH, PUT with the
 * digest) without holding it in memory; returns its digest.
 */
export async function pushRandomBlob(
  target: PushTarget,
  repo: string,
  size: number,
  chunkSize = 1 << 20,
): Promise<RandomBlob> {
  const client = clientOf(target);
  const location = await startUpload(client, repo); // also caches push credentials
  const hash = createHash("sha256");
  let remaining = size;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (remaining <= 0) {
        controller.close();
        return;
      }
      const n = Math.min(chunkSize, remaining);
      const chunk = new Uint8Array(randomBytes(n));
      hash.update(chunk);
      remaining -= n;
      controller.enqueue(chunk);
    },
  });
  const patch = await client.expect(location, {
    method: "PATCH",
    body,
    headers: { "content-type": "application/octet-stream" },
  }, 202);
  await patch.body?.cancel();
  const sha256 = hash.digest("hex");
  const digest = `sha256:${sha256}`;
  const url = new URL(patch.headers.get("location") ?? location, client.target.url);
  url.searchParams.set("digest", digest);
  const put = await client.expect(url.href, { method: "PUT" }, 201);
  await put.body?.cancel();
  return { digest, sha256, size };
}

// ---------------------------------------------------------------------------------------------
// OCI image layout + skopeo

/** Writes an OCI image layout in `dir` holding the image or index under the tag `tag`. */
export async function writeOciLayout(dir: string, image: Image | Index, tag = "latest") {
  await Deno.mkdir(`${dir}/blobs/sha256`, { recursive: true });
  await Deno.writeTextFile(`${dir}/oci-layout`, JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  for (const blob of [...blobsOf(image), ...manifestsOf(image)]) {
    await Deno.writeFile(`${dir}/blobs/sha256/${blob.sha256}`, blob.bytes);
  }
  let existing: Descriptor[] = [];
  try {
    existing = JSON.parse(await Deno.readTextFile(`${dir}/index.json`)).manifests ?? [];
  } catch { /* new layout */ }
  const refName = "org.opencontainers.image.ref.name";
  existing = existing.filter((d) => d.annotations?.[refName] !== tag);
  existing.push(descriptorOf(image.manifest, { annotations: { [refName]: tag } }));
  await Deno.writeTextFile(
    `${dir}/index.json`,
    JSON.stringify({ schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: existing }),
  );
}

export interface SkopeoTarget {
  /** `127.0.0.1:PORT` */
  host: string;
  /** `user:pass` */
  creds?: string;
}

/**
 * `skopeo copy [--all] --preserve-digests oci:LAYOUT:TAG docker://HOST/REPO:DESTTAG`; throws with
 * skopeo's output on failure.
 */
export async function skopeoPush(
  target: SkopeoTarget,
  layoutDir: string,
  tag: string,
  repo: string,
  destTag = tag,
  extraArgs: string[] = [],
): Promise<RunResult> {
  const args = [
    "copy",
    "--all",
    "--preserve-digests",
    "--dest-tls-verify=false",
    "--retry-times=0",
  ];
  if (target.creds) args.push("--dest-creds", target.creds);
  args.push(...extraArgs, `oci:${layoutDir}:${tag}`, `docker://${target.host}/${repo}:${destTag}`);
  return await run("skopeo", args, { check: true, timeoutMs: 120_000 });
}

/**
 * `skopeo copy docker://HOST/REPO:REF dir:DEST` (one platform; --override-arch picks it); throws
 * with skopeo's output on failure.
 */
export async function skopeoPullDir(
  target: SkopeoTarget,
  repo: string,
  reference: string,
  dest: string,
  extraArgs: string[] = [],
): Promise<RunResult> {
  const sep = reference.includes(":") ? "@" : ":";
  const args = ["copy", "--src-tls-verify=false", "--retry-times=0"];
  if (target.creds) args.push("--src-creds", target.creds);
  args.push(...extraArgs, `docker://${target.host}/${repo}${sep}${reference}`, `dir:${dest}`);
  return await run("skopeo", args, { check: true, timeoutMs: 120_000 });
}

/** `skopeoPullDir` wrote `dir` with the image's manifest and every blob byte for byte. */
export async function assertDirImage(dir: string, image: Image) {
  assertEquals(await Deno.readFile(`${dir}/manifest.json`), image.manifest.bytes);
  for (const blob of [image.config, ...image.layers]) {
    assertEquals(await sha256File(`${dir}/${blob.sha256}`), blob.sha256, blob.digest);
  }
}
