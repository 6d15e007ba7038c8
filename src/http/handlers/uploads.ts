/**
 * Blob uploads (hosted repositories; a mirror's registry refuses them):
 *   POST /v2/<name>/blobs/uploads/[?digest= | ?mount=&from=]
 *   GET/PATCH/PUT/DELETE /v2/<name>/blobs/uploads/<id>
 * Request bodies are told to `streamed` (runtime/streaming.ts) as they arrive.
 */
import { parseDigest } from "../../oci/digest.ts";
import type { Streaming } from "../../runtime/streaming.ts";
import { RegistryError } from "../../oci/errors.ts";
import { isValidRepository } from "../../oci/reference.ts";
import { rangeHeader } from "../../registry/local.ts";
import type { Registry, UploadState } from "../../registry/registry.ts";

export async function startUpload(
  registry: Registry,
  name: string,
  request: Request,
  query: URLSearchParams,
  streamed: Streaming["streamed"],
): Promise<Response> {
  // Destructured, not query.get(...): a string literal ending in `from` followed by a quote
  // reads as an import to tests/e2e/bundle_test.ts's scan of the bundle.
  const { mount, from } = Object.fromEntries(query) as { mount?: string; from?: string };
  if (mount !== undefined) {
    const digest = parseDigest(mount).toString();
    // A `from` that is no hosted repository simply has nothing to mount: fall back (202).
    const mounted = from === undefined || isValidRepository(from)
      ? await registry.blobs.mount(name, digest, from)
      : null;
    if (mounted) {
      await request.body?.cancel();
      return created(name, digest);
    }
  }
  const digest = query.get("digest");
  if (digest !== null) {
    parseDigest(digest);
    const upload = await registry.uploads.start(name);
    try {
      await registry.uploads.finish(name, upload.id, digest, bodyOf(request, streamed), {
        length: contentLength(request),
      });
    } catch (e) {
      await registry.uploads.cancel(name, upload.id).catch(() => {});
      throw e;
    }
    return created(name, digest);
  }
  await request.body?.cancel();
  return accepted(name, await registry.uploads.start(name), 202);
}

export async function uploadStatus(
  registry: Registry,
  name: string,
  id: string,
): Promise<Response> {
  return accepted(name, await registry.uploads.status(name, id), 204);
}

export async function patchUpload(
  registry: Registry,
  name: string,
  id: string,
  request: Request,
  streamed: Streaming["streamed"],
): Promise<Response> {
  const length = contentLength(request);
  const range = parseContentRange(request.headers.get("content-range"));
  if (range && length !== undefined && length !== range.end - range.start + 1) {
    await request.body?.cancel();
    throw new RegistryError(
      "RANGE_INVALID",
      `Content-Range ${range.start}-${range.end} does not match Content-Length ${length}`,
    );
  }
  const state = await registry.uploads.append(name, id, bodyOf(request, streamed), {
    start: range?.start,
    length: length ?? (range ? range.end - range.start + 1 : undefined),
  });
  return accepted(name, state, 202);
}

export async function putUpload(
  registry: Registry,
  name: string,
  id: string,
  request: Request,
  query: URLSearchParams,
  streamed: Streaming["streamed"],
): Promise<Response> {
  const digest = query.get("digest");
  if (digest === null) {
    await request.body?.cancel();
    throw new RegistryError("DIGEST_INVALID", "the final PUT of an upload needs ?digest=");
  }
  parseDigest(digest);
  // A last chunk that says where it goes must go there.
  const range = parseContentRange(request.headers.get("content-range"));
  await registry.uploads.finish(name, id, digest, bodyOf(request, streamed), {
    start: range?.start,
    length: contentLength(request),
  });
  return created(name, digest);
}

export async function cancelUpload(
  registry: Registry,
  name: string,
  id: string,
): Promise<Response> {
  await registry.uploads.cancel(name, id);
  return new Response(null, { status: 204, headers: { "content-length": "0" } });
}

function created(name: string, digest: string): Response {
  return new Response(null, {
    status: 201,
    headers: {
      "location": `/v2/${name}/blobs/${digest}`,
      "docker-content-digest": digest,
      "content-length": "0",
    },
  });
}

function accepted(name: string, state: UploadState, status: 202 | 204): Response {
  return new Response(null, {
    status,
    headers: {
      "location": `/v2/${name}/blobs/uploads/${state.id}`,
      "range": rangeHeader(state.offset),
      "docker-upload-uuid": state.id,
      "content-length": "0",
    },
  });
}

/**
 * The request body, whose read failure (the client hung up before its Content-Length) is a
 * client error, BLOB_UPLOAD_INVALID, rather than an internal one; its buffers are told to
 * `streamed`.
 */
function bodyOf(
  request: Request,
  streamed: Streaming["streamed"],
): ReadableStream<Uint8Array> | null {
  // Without Content-Length or Transfer-Encoding an HTTP/1.1 request has no body (Deno still
  // hands out an empty stream): say so, so that a final PUT can move a lone chunk into place.
  const length = request.headers.get("content-length");
  const framed = length !== null || request.headers.has("transfer-encoding");
  if (!request.body || length === "0" || !framed) return null;
  const reader = request.body.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      let result: ReadableStreamReadResult<Uint8Array>;
      try {
        result = await reader.read();
      } catch (e) {
        throw new RegistryError(
          "BLOB_UPLOAD_INVALID",
          `the request body broke off: ${(e as Error)?.message ?? e}`,
          { cause: e },
        );
      }
      if (result.done) return controller.close();
      // Request chunks are fresh buffers too: collected promptly, they keep an upload's
      // memory flat (a 256 MiB upload in 1 MiB chunks otherwise left ~130 MB of garbage).
      streamed(result.value.byteLength);
      controller.enqueue(result.value);
    },
    cancel: (reason) => reader.cancel(reason),
  });
}

function contentLength(request: Request): number | undefined {
  const value = request.headers.get("content-length");
  return value === null || !/^\d+$/.test(value) ? undefined : Number(value);
}

/** `Content-Range: 0-99` as the OCI spec writes it (also `bytes 0-99` and `bytes=0-99`). */
export function parseContentRange(
  header: string | null,
): { start: number; end: number } | undefined {
  if (header === null) return undefined;
  const match = /^(?:bytes[ =])?(\d+)-(\d+)(?:\/(?:\d+|\*))?$/.exec(header.trim());
  if (!match || Number(match[2]) < Number(match[1])) {
    throw new RegistryError("RANGE_INVALID", `malformed Content-Range ${JSON.stringify(header)}`);
  }
  return { start: Number(match[1]), end: Number(match[2]) };
}
