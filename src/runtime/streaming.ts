/**
 * What the code that streams blob bytes asks of the process, passed in (not imported) so that
 * storage, registry, mirror and HTTP code hold no process-wide state of their own: `streamed`
 * paces garbage collection and tunes the allocator (memory.ts), `hasher` hashes a blob off the
 * JavaScript thread when it can (background_hash.ts).
 *
 * `serve` wires `processStreaming()`; everything else defaults to `IN_PLACE_STREAMING`, which
 * hashes in place and paces nothing: the same bytes and digests, for tests and tools that
 * stream little.
 */
import type { DigestAlgorithm } from "../oci/digest.ts";
import { type BlockHasher, createBlockHasher } from "./background_hash.ts";
import { MemoryPacer } from "./memory.ts";

export type { BlockHasher };

export interface Streaming {
  /** `bytes` of freshly allocated buffer passed through (to a response, or in from a client). */
  streamed(bytes: number): void;
  /** A hasher for one blob. */
  hasher(algorithm: DigestAlgorithm): BlockHasher;
}

export const IN_PLACE_STREAMING: Streaming = {
  streamed() {},
  hasher: (algorithm) => createBlockHasher(algorithm, { inPlace: true }),
};

/** The serving process's: GC pacing and allocator tuning, libcrypto hashing when possible. */
export function processStreaming(): Streaming {
  const pacer = new MemoryPacer();
  return {
    streamed: (bytes) => pacer.streamed(bytes),
    hasher: (algorithm) => createBlockHasher(algorithm),
  };
}
