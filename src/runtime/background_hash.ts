/**
 * Hashing off the JavaScript thread, for blob downloads.
 *
 * SHA-256 of a blob costs about as much CPU as receiving it, and Deno's main thread also does
 * the network I/O of every request. When the process may use FFI (`--allow-ffi`) and the
 * system has OpenSSL's libcrypto, each block is hashed by libcrypto on Deno's blocking-task
 * threads (a `nonblocking` FFI call) while the main thread goes on serving. Otherwise the
 * node:crypto Hasher does the work in place: the same digests, only slower under load.
 */
import { type DigestAlgorithm, Hasher } from "../oci/digest.ts";

export interface BlockHasher {
  /**
   * Queues `bytes` for hashing. They are read later, on another thread: the caller must not
   * change them until the returned promise settled. It never rejects: failures surface in
   * digest().
   */
  update(bytes: Uint8Array): Promise<void>;
  /** `algorithm:hex` of everything queued; the hasher cannot be used afterwards. */
  digest(): Promise<string>;
  /** Frees the hasher without a result (a failed download); safe to call more than once. */
  dispose(): void;
}

const SYMBOLS = {
  EVP_MD_CTX_new: { parameters: [], result: "pointer" },
  EVP_MD_CTX_free: { parameters: ["pointer"], result: "void" },
  EVP_sha256: { parameters: [], result: "pointer" },
  EVP_sha512: { parameters: [], result: "pointer" },
  EVP_DigestInit_ex: { parameters: ["pointer", "pointer", "pointer"], result: "i32" },
  EVP_DigestUpdate: {
    parameters: ["pointer", "buffer", "usize"],
    result: "i32",
    nonblocking: true,
  },
  EVP_DigestFinal_ex: { parameters: ["pointer", "buffer", "pointer"], result: "i32" },
} as const;

type Libcrypto = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** Names the dynamic loader resolves on Linux distributions with OpenSSL 3 (or 1.1). */
const LIBRARY_NAMES = ["libcrypto.so.3", "libcrypto.so", "libcrypto.so.1.1"];

let libcrypto: Libcrypto | null | undefined;

function loadLibcrypto(): Libcrypto | null {
  if (libcrypto !== undefined) return libcrypto;
  libcrypto = null;
  if (Deno.build.os !== "linux") return libcrypto;
  for (const name of LIBRARY_NAMES) {
    try {
      libcrypto = Deno.dlopen(name, SYMBOLS).symbols;
      break;
    } catch { /* no FFI permission, or not this name: try the next, else node:crypto */ }
  }
  return libcrypto;
}

/** Whether blob hashing runs off the JavaScript thread (for the start-up log line). */
export function hashesInBackground(): boolean {
  return loadLibcrypto() !== null;
}

/** A hasher for one blob: on a libcrypto thread when it can, else in place (or when asked). */
export function createBlockHasher(
  algorithm: DigestAlgorithm,
  options: { inPlace?: boolean } = {},
): BlockHasher {
  const lib = options.inPlace ? null : loadLibcrypto();
  return lib ? new LibcryptoHasher(lib, algorithm) : new InPlaceHasher(algorithm);
}

class InPlaceHasher implements BlockHasher {
  #hasher: Hasher;
  constructor(algorithm: DigestAlgorithm) {
    this.#hasher = new Hasher(algorithm);
  }
  update(bytes: Uint8Array): Promise<void> {
    this.#hasher.update(bytes);
    return Promise.resolve();
  }
  digest(): Promise<string> {
    return Promise.resolve(this.#hasher.digest());
  }
  dispose(): void {}
}

const DIGEST_BYTES: Record<DigestAlgorithm, number> = { sha256: 32, sha512: 64 };

class LibcryptoHasher implements BlockHasher {
  #lib: Libcrypto;
  #algorithm: DigestAlgorithm;
  #context: Deno.PointerValue;
  /** The queued updates, one at a time in order; each keeps its bytes referenced until done. */
  #queue: Promise<void> = Promise.resolve();

  constructor(lib: Libcrypto, algorithm: DigestAlgorithm) {
    this.#lib = lib;
    this.#algorithm = algorithm;
    this.#context = lib.EVP_MD_CTX_new();
    if (this.#context === null) throw new Error("EVP_MD_CTX_new failed");
    const md = algorithm === "sha256" ? lib.EVP_sha256() : lib.EVP_sha512();
    if (lib.EVP_DigestInit_ex(this.#context, md, null) !== 1) {
      this.dispose();
      throw new Error("EVP_DigestInit_ex failed");
    }
  }

  update(bytes: Uint8Array): Promise<void> {
    if (bytes.byteLength === 0) return Promise.resolve();
    this.#queue = this.#queue.then(async () => {
      const context = this.#context;
      if (context === null) throw new Error("hasher was disposed");
      if (await this.#lib.EVP_DigestUpdate(context, bytes, BigInt(bytes.byteLength)) !== 1) {
        throw new Error("EVP_DigestUpdate failed");
      }
    });
    return this.#queue.catch(() => {}); // reported by digest()
  }

  async digest(): Promise<string> {
    try {
      await this.#queue;
      const out = new Uint8Array(DIGEST_BYTES[this.#algorithm]);
      if (this.#context === null || this.#lib.EVP_DigestFinal_ex(this.#context, out, null) !== 1) {
        throw new Error("EVP_DigestFinal_ex failed");
      }
      return `${this.#algorithm}:${
        Array.from(out, (b) => b.toString(16).padStart(2, "0")).join("")
      }`;
    } finally {
      this.dispose();
    }
  }

  dispose(): void {
    const context = this.#context;
    if (context === null) return;
    this.#context = null;
    // An update may still run on its thread: free the context only after the queue drained.
    this.#queue.catch(() => {}).finally(() => this.#lib.EVP_MD_CTX_free(context));
  }
}
