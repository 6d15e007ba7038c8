/** GET/HEAD /v2/<name>/manifests/<reference> */
import type { Mirror } from "../cache/mirror.ts";
import { parseAccept } from "../oci/media_types.ts";
import { assertManifestReference } from "../oci/reference.ts";
import type { ResolvedName } from "../oci/namespace.ts";

export async function getManifest(
  mirror: Mirror,
  name: ResolvedName,
  reference: string,
  request: Request,
): Promise<Response> {
  assertManifestReference(reference, { read: true });
  const accept = parseAccept(request.headers.get("accept"));
  const manifest = await mirror.getManifest(name.namespace, name.repository, reference, accept);
  const etag = `"${manifest.digest}"`;
  const headers = new Headers({
    "content-type": manifest.mediaType,
    "content-length": String(manifest.bytes.byteLength),
    "docker-content-digest": manifest.digest,
    "etag": etag,
  });
  if (request.headers.get("if-none-match") === etag) {
    return new Response(null, { status: 304, headers });
  }
  const body = request.method === "HEAD" ? null : manifest.bytes as Uint8Array<ArrayBuffer>;
  return new Response(body, { status: 200, headers });
}
