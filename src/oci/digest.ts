/** Content digests: parsing, and streaming hashing with node:crypto (native speed). */
import { createHash, type Hash } from "node:crypto";
import { RegistryError } from "./errors.ts";

export type DigestAlgorithm = "sha256" | "sha512";

const HEX_LENGTH: Record<DigestAlgorithm, number> = { sha256: 64, sha512: 128 };
const DIGEST_PATTERN = /^(sha256|sha512):([a-f0-9]+)$/;

export interface Digest {
  algorithm: DigestAlgorithm;
  hex: string;
  /** `algorithm:hex` */
  toString(): string;
}

/** Parses and validates a digest string; throws DIGEST_INVALID on anything else. */
export function parseDigest(value: string): Digest {
  const match = DIGEST_PATTERN.exec(value);
  const algorithm = match?.[1] as DigestAlgorithm | undefined;
  if (!match || !algorithm || match[2].length !== HEX_LENGTH[algorithm]) {
    throw new RegistryError("DIGEST_INVALID", `invalid digest: ${JSON.stringify(value)}`);
  }
  const hex = match[2];
  return { algorithm, hex, toString: () => `${algorithm}:${hex}` };
}

export function isDigest(value: string): boolean {
  const match = DIGEST_PATTERN.exec(value);
  return !!match && match[2].length === HEX_LENGTH[match[1] as DigestAlgorithm];
}

/** Incremental hasher producing `algorithm:hex`. */
export class Hasher {
  readonly algorithm: DigestAlgorithm;
  #hash: Hash;
  constructor(algorithm: DigestAlgorithm = "sha256") {
    this.algorithm = algorithm;
    this.#hash = createHash(algorithm);
  }
  update(chunk: Uint8Array): void {
    this.#hash.update(chunk);
  }
  digest(): string {
    return `${this.algorithm}:${this.#hash.digest("hex")}`;
  }
}

export function digestOf(bytes: Uint8Array, algorithm: DigestAlgorithm = "sha256"): string {
  const hasher = new Hasher(algorithm);
  hasher.update(bytes);
  return hasher.digest();
}

/**
 * Hashes and counts written bytes; throws RegistryError SIZE_INVALID / DIGEST_INVALID at the
 * first sign of trouble. Every storage back-end checks what it writes with it.
 */
export class ContentCheck {
  #digest?: string;
  #size?: number;
  #hasher?: Hasher;
  #count = 0;

  constructor(options: { digest?: string; size?: number }) {
    this.#size = options.size;
    if (options.digest !== undefined) {
      this.#digest = options.digest;
      this.#hasher = new Hasher(parseDigest(options.digest).algorithm);
    }
  }

  update(chunk: Uint8Array): void {
    this.#count += chunk.byteLength;
    if (this.#size !== undefined && this.#count > this.#size) this.#sizeError(`${this.#count}+`);
    this.#hasher?.update(chunk);
  }

  finish(): void {
    this.finishWithSize(this.#count);
    if (this.#hasher) {
      const actual = this.#hasher.digest();
      if (actual !== this.#digest) {
        throw new RegistryError(
          "DIGEST_INVALID",
          `content digest ${actual} does not match ${this.#digest}`,
        );
      }
    }
  }

  finishWithSize(size: number, what = "content"): void {
    if (this.#size !== undefined && size !== this.#size) this.#sizeError(`${size}`, what);
  }

  #sizeError(actual: string, what = "content"): never {
    throw new RegistryError(
      "SIZE_INVALID",
      `${what} has ${actual} bytes, expected ${this.#size}`,
    );
  }
}
