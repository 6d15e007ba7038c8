/**
 * An in-process upstream whose answers a test scripts (lying, slow, down, rate-limited), for
 * unit tests of edge cases only; end-to-end tests use the real docker-registry.
 */
import { concatBytes } from "../../src/runtime/bytes.ts";
import { digestOf } from "../../src/oci/digest.ts";
import { RegistryError } from "../../src/oci/errors.ts";
import { OCI_MANIFEST } from "../../src/oci/media_types.ts";
import type { Upstream } from "../../src/mirror/mirror.ts";

const encoder = new TextEncoder();

export interface Call {
  kind: "manifest" | "blob" | "tags";
  method: string;
  reference: string;
}

/** An upstream whose answers a test scripts, recording every call. */
export class FakeUpstream implements Upstream {
  calls: Call[] = [];
  manifests = new Map<string, { bytes: Uint8Array; mediaType: string }>();
  blobs = new Map<string, Uint8Array>();
  /** When set, every call fails with this error. */
  failure?: RegistryError;
  /** Bytes served instead of the real blob content (a lying upstream). */
  lie?: Uint8Array;
  /** Delay between blob chunks, to make downloads observable in flight. */
  chunkDelayMs = 0;
  chunkSize = 64 * 1024;
  /** Serve blob bodies as byte streams (like Deno's fetch) instead of plain streams. */
  byteStreams = false;
  /** When set, only repositories it accepts have any content (others answer unknown). */
  holds?: (namespace: string, repository: string) => boolean;
  /** The next blob GET's body breaks after this many bytes (once), as a dropped connection. */
  breakAfter?: number;
  /** Answer Range requests with 206 (true) or ignore them with a whole 200 (false). */
  honoursRange = true;
  /** The Range header of every blob GET, in order ("" for none). */
  ranges: string[] = [];
  /** What `quotaLow` answers: an upstream whose rate-limit quota is nearly spent. */
  quotaIsLow = false;

  quotaLow(_namespace: string): boolean {
    return this.quotaIsLow;
  }

  addManifest(tag: string, document: unknown): string {
    const bytes = encoder.encode(JSON.stringify(document));
    const digest = digestOf(bytes);
    const mediaType = (document as { mediaType?: string }).mediaType ?? OCI_MANIFEST;
    this.manifests.set(tag, { bytes, mediaType });
    this.manifests.set(digest, { bytes, mediaType });
    return digest;
  }

  addBlob(bytes: Uint8Array): string {
    const digest = digestOf(bytes);
    this.blobs.set(digest, bytes);
    return digest;
  }

  count(kind: Call["kind"], method?: string): number {
    return this.calls.filter((c) => c.kind === kind && (!method || c.method === method)).length;
  }

  manifest(ns: string, repo: string, reference: string, init: { method: "GET" | "HEAD" }) {
    this.calls.push({ kind: "manifest", method: init.method, reference });
    if (this.failure) return Promise.reject(this.failure);
    const found = this.holds?.(ns, repo) === false ? undefined : this.manifests.get(reference);
    if (!found) return Promise.reject(new RegistryError("MANIFEST_UNKNOWN", "upstream: unknown"));
    return Promise.resolve(
      new Response(init.method === "HEAD" ? null : found.bytes as Uint8Array<ArrayBuffer>, {
        headers: {
          "content-type": found.mediaType,
          "docker-content-digest": digestOf(found.bytes),
          "content-length": String(found.bytes.byteLength),
        },
      }),
    );
  }

  blob(
    ns: string,
    repo: string,
    digest: string,
    init: { method: "GET" | "HEAD"; range?: string },
  ) {
    this.calls.push({ kind: "blob", method: init.method, reference: digest });
    if (this.failure) return Promise.reject(this.failure);
    const real = this.holds?.(ns, repo) === false ? undefined : this.blobs.get(digest);
    if (!real) return Promise.reject(new RegistryError("BLOB_UNKNOWN", "upstream: unknown"));
    let bytes = this.lie ?? real;
    const headers: Record<string, string> = { "content-length": String(bytes.byteLength) };
    if (init.method === "HEAD") return Promise.resolve(new Response(null, { headers }));
    this.ranges.push(init.range ?? "");
    let status = 200;
    const from = /^bytes=(\d+)-$/.exec(init.range ?? "");
    if (from && this.honoursRange) {
      const start = Number(from[1]);
      headers["content-range"] = `bytes ${start}-${bytes.byteLength - 1}/${bytes.byteLength}`;
      bytes = bytes.subarray(start);
      headers["content-length"] = String(bytes.byteLength);
      status = 206;
    }
    const breakAt = this.breakAfter;
    this.breakAfter = undefined;
    let offset = 0;
    const { chunkDelayMs, chunkSize } = this;
    const pull = async (
      controller: ReadableStreamDefaultController | ReadableByteStreamController,
    ) => {
      if (chunkDelayMs) await new Promise((r) => setTimeout(r, chunkDelayMs));
      if (breakAt !== undefined && offset >= breakAt) {
        controller.error(new TypeError("error reading a body from connection"));
        return;
      }
      if (offset >= bytes.byteLength) {
        controller.close();
        (controller as ReadableByteStreamController).byobRequest?.respond(0);
        return;
      }
      controller.enqueue(bytes.slice(offset, offset + chunkSize));
      offset += chunkSize;
    };
    const body = this.byteStreams
      ? new ReadableStream({ type: "bytes", pull })
      : new ReadableStream<Uint8Array>({ pull });
    return Promise.resolve(new Response(body, { status, headers }));
  }

  /** Three tags, paginated like Docker Hub when `n` is given. */
  tags(_ns: string, repository: string, query: URLSearchParams) {
    this.calls.push({ kind: "tags", method: "GET", reference: query.toString() });
    if (this.failure) return Promise.reject(this.failure);
    const all = ["1", "2", "3"];
    const last = query.get("last");
    const start = last ? all.indexOf(last) + 1 : 0;
    const n = Number(query.get("n") ?? all.length);
    const tags = all.slice(start, start + n);
    const headers = new Headers();
    if (start + n < all.length) {
      headers.set("link", `</v2/${repository}/tags/list?last=${tags.at(-1)}&n=${n}>; rel="next"`);
    }
    return Promise.resolve(Response.json({ name: repository, tags }, { headers }));
  }
}

export async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Everything a reader that already read some chunks still has to give. */
export async function readRest(
  reader: ReadableStreamDefaultReader<Uint8Array>,
): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (let r = await reader.read(); !r.done; r = await reader.read()) {
    chunks.push(r.value);
    total += r.value.byteLength;
  }
  return concatBytes(chunks, total);
}

export function randomBytes(size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
  return bytes;
}
