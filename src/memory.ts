/**
 * Keeps streamed blob buffers from piling up in memory.
 *
 * Serving a blob allocates a fresh 1 MiB buffer per read (the HTTP server takes ownership of
 * each chunk), and V8 only collects such buffers after external memory grew by tens of MiB, so
 * every large pull would raise RSS by 60-80 MB of garbage. When the process runs with
 * `--v8-flags=--expose-gc` (the start and compile tasks, and the container image, set it), a
 * young-generation collection every STREAMED_BYTES_PER_GC keeps RSS near idle. It costs about a
 * millisecond per 16 MiB. Without the flag this does nothing.
 */

const STREAMED_BYTES_PER_GC = 4 << 20;

const collect = (globalThis as { gc?: (options?: { type?: string }) => void }).gc;
let sinceLastGc = 0;

/** Records that `bytes` of freshly allocated buffer passed through (to a response, or in from upstream). */
export function noteStreamed(bytes: number): void {
  if (!collect) return;
  sinceLastGc += bytes;
  if (sinceLastGc >= STREAMED_BYTES_PER_GC) {
    sinceLastGc = 0;
    collect({ type: "minor" });
  }
}
