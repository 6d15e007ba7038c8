/** GET/HEAD/PUT/DELETE /v2/<name>/manifests/<reference> */
import { manifestResponse } from "./responses.ts";
import { RegistryError } from "../../oci/errors.ts";
import { MAX_MANIFEST_BYTES, parseAccept } from "../../oci/media_types.ts";
import { assertManifestReference } from "../../oci/reference.ts";
import type { Registry } from "../../registry/registry.ts";
import { concatBytes } from "../../runtime/bytes.ts";

export async function getManifest(
  registry: Registry,
  name: string,
  reference: string,
  request: Request,
): Promise<Response> {
  assertManifestReference(reference, { read: true });
  const accept = parseAccept(request.headers.get("accept"));
  const manifest = await registry.manifests.get(name, reference, accept);
  return manifestResponse(manifest, request);
}

export async function putManifest(
  registry: Registry,
  name: string,
  reference: string,
  request: Request,
  query: URLSearchParams,
): Promise<Response> {
  assertManifestReference(reference);
  const bytes = await readManifestBody(request);
  const result = await registry.manifests.put(
    name,
    reference,
    bytes,
    request.headers.get("content-type"),
    query.getAll("tag"),
  );
  const headers = new Headers({
    "location": `/v2/${name}/manifests/${result.digest}`,
    "docker-content-digest": result.digest,
    "content-length": "0",
  });
  if (result.subject) headers.set("oci-subject", result.subject);
  for (const tag of result.tags) headers.append("oci-tag", tag);
  return new Response(null, { status: 201, headers });
}

export async function deleteManifest(
  registry: Registry,
  name: string,
  reference: string,
): Promise<Response> {
  assertManifestReference(reference, { read: true });
  await registry.manifests.delete(name, reference);
  return new Response(null, { status: 202, headers: { "content-length": "0" } });
}

/** The body, at most MAX_MANIFEST_BYTES (413 above, without reading on). */
async function readManifestBody(request: Request): Promise<Uint8Array> {
  const tooLarge = () =>
    new RegistryError("MANIFEST_INVALID", `manifest larger than ${MAX_MANIFEST_BYTES} bytes`, {
      status: 413,
    });
  const declared = Number(request.headers.get("content-length") ?? NaN);
  if (declared > MAX_MANIFEST_BYTES) {
    await request.body?.cancel();
    throw tooLarge();
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for await (const chunk of request.body ?? []) {
      total += chunk.byteLength;
      if (total > MAX_MANIFEST_BYTES) throw tooLarge();
      chunks.push(chunk);
    }
  } catch (e) {
    if (e instanceof RegistryError) throw e;
    throw new RegistryError("MANIFEST_INVALID", "the request body broke off", { cause: e });
  }
  if (total === 0) throw new RegistryError("MANIFEST_INVALID", "the manifest body is empty");
  return concatBytes(chunks, total);
}
