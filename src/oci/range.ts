/**
 * HTTP single-range requests for blobs (RFC 9110 section 14), in two steps: the HTTP side
 * parses the header, and whoever learns the blob's size (storage, or a download under way)
 * resolves it. A mirror miss knows the size only once upstream answers, so the request travels
 * to it as data rather than as a callback.
 */
import { RegistryError } from "./errors.ts";
import type { ByteRange } from "../storage/storage.ts";

/** A `Range: bytes=...` header before the size is known: `first-[last]`, or the last `suffix`. */
export type RangeRequest = { first: number; last?: number } | { suffix: number };

/**
 * The range a header asks for, or undefined for the whole body: no header, or a malformed,
 * multi-range or backwards one (which servers may ignore).
 */
export function parseRangeHeader(header: string | null): RangeRequest | undefined {
  if (header === null) return undefined;
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match || (match[1] === "" && match[2] === "")) return undefined;
  if (match[1] === "") return { suffix: Number(match[2]) };
  const first = Number(match[1]);
  if (match[2] === "") return { first };
  const last = Number(match[2]);
  return last < first ? undefined : { first, last };
}

/**
 * The bytes of a `size`-byte blob a request asks for; undefined for the whole blob (no
 * request, or a size nobody knows). Throws RANGE_INVALID (416) when no byte of it exists.
 */
export function resolveRange(
  request: RangeRequest | undefined,
  size: number | undefined,
): ByteRange | undefined {
  if (request === undefined || size === undefined) return undefined;
  if ("suffix" in request) {
    if (request.suffix === 0) throw unsatisfiable(size);
    return { start: Math.max(0, size - request.suffix), end: size - 1 };
  }
  if (request.first >= size) throw unsatisfiable(size);
  return { start: request.first, end: Math.min(request.last ?? size - 1, size - 1) };
}

/** Both steps at once, for a size known up front. */
export function parseRange(header: string | null, size: number | undefined): ByteRange | undefined {
  return resolveRange(parseRangeHeader(header), size);
}

/** `Content-Range` of a 206 answer. */
export function contentRange(range: ByteRange, size: number): string {
  return `bytes ${range.start}-${range.end}/${size}`;
}

function unsatisfiable(size: number): RegistryError {
  return new RegistryError("RANGE_INVALID", `requested range not satisfiable (size ${size})`, {
    headers: { "content-range": `bytes */${size}` },
  });
}
