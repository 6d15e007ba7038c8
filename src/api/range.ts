/** HTTP single-range requests for blobs (RFC 9110 section 14). */
import { RegistryError } from "../oci/errors.ts";
import type { ByteRange } from "../storage/storage.ts";

/**
 * The range a `Range` header asks for within `size` bytes. Returns undefined when the whole
 * body should be sent: no header, a malformed or multi-range header (which servers may ignore),
 * or an unknown size. Throws RANGE_INVALID (416) when no byte of the range exists.
 */
export function parseRange(header: string | null, size: number | undefined): ByteRange | undefined {
  if (header === null || size === undefined) return undefined;
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match || (match[1] === "" && match[2] === "")) return undefined;
  let start: number;
  let end: number;
  if (match[1] === "") {
    const suffix = Number(match[2]);
    if (suffix === 0) throw unsatisfiable(size);
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(match[1]);
    end = match[2] === "" ? size - 1 : Math.min(Number(match[2]), size - 1);
    if (match[2] !== "" && Number(match[2]) < start) return undefined; // invalid: ignore
  }
  if (start >= size) throw unsatisfiable(size);
  return { start, end };
}

function unsatisfiable(size: number): RegistryError {
  return new RegistryError("RANGE_INVALID", `requested range not satisfiable (size ${size})`, {
    headers: { "content-range": `bytes */${size}` },
  });
}
