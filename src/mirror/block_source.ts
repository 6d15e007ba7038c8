/**
 * Reads a body into the caller's blocks. A byte stream (fetch bodies are) reads straight into
 * the block, no copy; any other stream's chunks are copied in.
 */
export class BlockSource {
  #byob?: ReadableStreamBYOBReader;
  #default?: ReadableStreamDefaultReader<Uint8Array>;
  /** Bytes of a default-stream chunk that did not fit the last block. */
  #left: Uint8Array = new Uint8Array(0);

  constructor(body: ReadableStream<Uint8Array>) {
    try {
      this.#byob = body.getReader({ mode: "byob" });
    } catch {
      this.#default = body.getReader();
    }
  }

  /**
   * Reads into `block` from `offset`. Returns the block (a BYOB read hands its memory back in
   * a new view) and the bytes read, 0 at the end of the body.
   */
  async read(block: Uint8Array, offset: number): Promise<{ block: Uint8Array; n: number }> {
    if (this.#byob) {
      const length = block.byteLength; // the read detaches `block`
      const { done, value } = await this.#byob.read(block.subarray(offset));
      if (!value) throw new Error("body was cancelled");
      const back = new Uint8Array(value.buffer, 0, length);
      return { block: back, n: done ? 0 : value.byteLength };
    }
    if (this.#left.byteLength === 0) {
      const { done, value } = await this.#default!.read();
      if (done) return { block, n: 0 };
      this.#left = value;
    }
    const n = Math.min(this.#left.byteLength, block.byteLength - offset);
    block.set(this.#left.subarray(0, n), offset);
    this.#left = this.#left.subarray(n);
    return { block, n };
  }

  /** Whether the body has any byte left (read at its announced end). */
  async hasMore(): Promise<boolean> {
    const probe = await this.read(new Uint8Array(1), 0);
    return probe.n > 0;
  }

  async cancel(): Promise<void> {
    await (this.#byob ?? this.#default)!.cancel().catch(() => {});
  }
}
