/**
 * The responses hosted and mirrored repositories answer alike: a manifest (with its ETag and
 * 304 on If-None-Match), and the headers of a blob.
 */

/** A manifest as clients get it, or 304 when they hold it already. */
export function manifestResponse(
  manifest: { digest: string; mediaType: string; bytes: Uint8Array; cache?: string },
  request: Request,
): Response {
  const etag = `"${manifest.digest}"`;
  const headers = new Headers({
    "content-type": manifest.mediaType,
    "content-length": String(manifest.bytes.byteLength),
    "docker-content-digest": manifest.digest,
    "etag": etag,
  });
  // Mirrored content says what the cache did (hit, miss, stale, revalidated).
  if (manifest.cache) headers.set("x-cache", manifest.cache);
  if (request.headers.get("if-none-match") === etag) {
    return new Response(null, { status: 304, headers });
  }
  const body = request.method === "HEAD" ? null : manifest.bytes as Uint8Array<ArrayBuffer>;
  return new Response(body, { status: 200, headers });
}

/** What every blob answer carries, whatever its status (200, 206, 307). */
export function blobHeaders(digest: string): Headers {
  return new Headers({
    "content-type": "application/octet-stream",
    "docker-content-digest": digest,
    "etag": `"${digest}"`,
    "accept-ranges": "bytes",
    // Content-addressed: the bytes behind a digest never change.
    "cache-control": "max-age=31536000, immutable",
  });
}
