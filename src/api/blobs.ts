/** GET/HEAD /v2/<name>/blobs/<digest> */
import { blobHeaders } from "./responses.ts";
import type { Mirror } from "../cache/mirror.ts";
import { parseDigest } from "../digest.ts";
import type { ResolvedName } from "../oci/namespace.ts";
import type { ByteRange } from "../storage/storage.ts";
import { parseRange } from "./range.ts";

export async function getBlob(
  mirror: Mirror,
  name: ResolvedName,
  reference: string,
  request: Request,
): Promise<Response> {
  const digest = parseDigest(reference).toString();
  const method = request.method === "HEAD" ? "HEAD" : "GET";
  let range: ByteRange | undefined;
  const rangeHeader = request.headers.get("range");
  const blob = await mirror.getBlob(name.namespace, name.repository, digest, {
    method,
    // Only requests with a Range header need the size before the body is opened.
    range: rangeHeader === null ? undefined : (size) => (range = parseRange(rangeHeader, size)),
  });
  const headers = blobHeaders(digest);
  if (blob.cache) headers.set("x-cache", blob.cache);
  if (blob.redirect) {
    headers.set("location", blob.redirect);
    return new Response(null, { status: 307, headers });
  }
  if (range && blob.size !== undefined) {
    headers.set("content-range", `bytes ${range.start}-${range.end}/${blob.size}`);
    headers.set("content-length", String(range.end - range.start + 1));
    return new Response(blob.body ?? null, { status: 206, headers });
  }
  if (blob.size !== undefined) headers.set("content-length", String(blob.size));
  return new Response(blob.body ?? null, { status: 200, headers });
}
