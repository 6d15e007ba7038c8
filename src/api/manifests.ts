/** GET/HEAD /v2/<name>/manifests/<reference> */
import { manifestResponse } from "./responses.ts";
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
  return manifestResponse(manifest, request);
}
