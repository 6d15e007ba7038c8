/** GET/HEAD/DELETE /v2/<name>/blobs/<digest> */
import { blobHeaders } from "./responses.ts";
import { parseDigest } from "../../oci/digest.ts";
import { RegistryError } from "../../oci/errors.ts";
import { contentRange, parseRangeHeader } from "../../oci/range.ts";
import type { Registry } from "../../registry/registry.ts";

export async function getBlob(
  registry: Registry,
  name: string,
  reference: string,
  request: Request,
): Promise<Response> {
  const digest = parseDigest(reference).toString();
  const blob = await registry.blobs.get(name, digest, {
    body: request.method !== "HEAD",
    range: parseRangeHeader(request.headers.get("range")),
  });
  if (!blob) throw new RegistryError("BLOB_UNKNOWN", `blob ${digest} is not in ${name}`);
  const headers = blobHeaders(digest);
  if (blob.cache) headers.set("x-cache", blob.cache);
  if (blob.redirect) {
    headers.set("location", blob.redirect);
    return new Response(null, { status: 307, headers });
  }
  if (blob.range && blob.size !== undefined) {
    headers.set("content-range", contentRange(blob.range, blob.size));
    headers.set("content-length", String(blob.range.end - blob.range.start + 1));
    return new Response(blob.body ?? null, { status: 206, headers });
  }
  if (blob.size !== undefined) headers.set("content-length", String(blob.size));
  return new Response(blob.body ?? null, { status: 200, headers });
}

export async function deleteBlob(
  registry: Registry,
  name: string,
  reference: string,
): Promise<Response> {
  const digest = parseDigest(reference).toString();
  await registry.blobs.delete(name, digest);
  return new Response(null, { status: 202, headers: { "content-length": "0" } });
}
