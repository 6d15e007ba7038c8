/** Content digests: parsing, and streaming hashing with node:crypto (native speed). */
import { createHash, type Hash } from "node:crypto";
import { RegistryError } from "./oci/errors.ts";

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
 * A pass-through stream that hashes what flows through it and, at the end, fails the stream
 * (instead of closing it) when the content does not match `expected` digest or size.
 */
export function verifyingStream(
  expected: string,
  expectedSize?: number,
): TransformStream<Uint8Array, Uint8Array> {
  const digest = parseDigest(expected);
  const hasher = new Hasher(digest.algorithm);
  let size = 0;
  return new TransformStream({
    transform(chunk, controller) {
      hasher.update(chunk);
      size += chunk.byteLength;
      if (expectedSize !== undefined && size > expectedSize) {
        controller.error(sizeMismatch(expected, expectedSize, size));
        return;
      }
      controller.enqueue(chunk);
    },
    flush(controller) {
      if (expectedSize !== undefined && size !== expectedSize) {
        controller.error(sizeMismatch(expected, expectedSize, size));
        return;
      }
      const actual = hasher.digest();
      if (actual !== expected) {
        controller.error(
          new RegistryError(
            "DIGEST_INVALID",
            `content digest ${actual} does not match ${expected}`,
          ),
        );
      }
    },
  });
}

function sizeMismatch(digest: string, expected: number, actual: number): RegistryError {
  return new RegistryError(
    "SIZE_INVALID",
    `content of ${digest} has ${actual}${actual > expected ? "+" : ""} bytes, expected ${expected}`,
  );
}
