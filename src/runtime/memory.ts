/**
 * Keeps streamed blob buffers from piling up in memory, and cheap to allocate.
 *
 * Serving a blob allocates a fresh 1 MiB buffer per read (the HTTP server takes ownership of
 * each chunk), and V8 only collects such buffers after external memory grew by tens of MiB, so
 * every large pull would raise RSS by 60-80 MB of garbage. When the process runs with
 * `--v8-flags=--expose-gc` (the start and compile tasks, and the container image, set it), a
 * young-generation collection every STREAMED_BYTES_PER_GC keeps RSS near idle. It costs about a
 * millisecond per 16 MiB. Without the flag this does nothing.
 *
 * The first streamed bytes also tune glibc's allocator (tuneAllocator); not at start-up, where
 * the FFI machinery would add 1-2 MB to the idle footprint of a process that may never stream.
 */

const STREAMED_BYTES_PER_GC = 4 << 20;

const collect = (globalThis as { gc?: (options?: { type?: string }) => void }).gc;

/** Counts streamed bytes and collects the young generation every STREAMED_BYTES_PER_GC. */
export class MemoryPacer {
  #sinceLastGc = 0;
  #allocatorTuned: boolean | undefined;

  /** Records that `bytes` of freshly allocated buffer passed through. */
  streamed(bytes: number): void {
    this.#allocatorTuned ??= tuneAllocator();
    if (!collect) return;
    this.#sinceLastGc += bytes;
    if (this.#sinceLastGc >= STREAMED_BYTES_PER_GC) {
      this.#sinceLastGc = 0;
      collect({ type: "minor" });
    }
  }
}

/** glibc's mallopt parameters (malloc.h). */
const M_TRIM_THRESHOLD = -1;
const M_MMAP_THRESHOLD = -3;

/**
 * Lets glibc reuse the memory of freed blob buffers instead of returning it to the kernel.
 * By default a 1 MiB buffer is its own mmap: every block of every download then costs 256
 * fresh pages, each a page fault plus zeroing (on this VM, about a fifth of a cold pull's
 * time). With buffers up to `mmapAbove` taken from the heap, and up to `keepFree` of free heap
 * kept, a download recycles the same few MiB. (Keeping 16 MiB was no faster and held ~6 MB more
 * during a 1 GiB pull.) Needs `--allow-ffi` and glibc; else a no-op.
 */
export function tuneAllocator(mmapAbove = 4 << 20, keepFree = 4 << 20): boolean {
  if (Deno.build.os !== "linux") return false;
  try {
    const libc = Deno.dlopen("libc.so.6", {
      mallopt: { parameters: ["i32", "i32"], result: "i32" },
    });
    const ok = libc.symbols.mallopt(M_MMAP_THRESHOLD, mmapAbove) === 1 &&
      libc.symbols.mallopt(M_TRIM_THRESHOLD, keepFree) === 1;
    libc.close();
    return ok;
  } catch {
    return false; // no FFI permission, or not glibc (musl has no mallopt)
  }
}
