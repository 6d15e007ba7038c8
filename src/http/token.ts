/**
 * The mirror's own bearer tokens (Docker token auth): `base64url(claims).base64url(HMAC)`,
 * HMAC-SHA256 under a key from `token.secret_file` (shared by replicas) or random per process.
 * A token names its subject, expiry and the access granted per resource; it is checked on every
 * request (signature in constant time, expiry, scope) and the current rules are checked too, so
 * a revoked right ends at once rather than when the token expires.
 */
import { Buffer } from "node:buffer";
import { createHmac, timingSafeEqual } from "node:crypto";
import type { Action } from "../config/access.ts";

export interface TokenClaims {
  /** The user; "" for an anonymous token. */
  sub: string;
  /** Expiry, seconds since the epoch. */
  exp: number;
  /** Issued at, seconds since the epoch. */
  iat: number;
  /** Granted actions by resource key (see `resourceKey` in auth.ts). */
  access: Record<string, Action[]>;
}

/** Longer tokens are refused before any decoding (a token with 20 scopes is ~2 KiB). */
export const MAX_TOKEN_CHARS = 8192;

export class TokenSigner {
  readonly #key: Uint8Array;
  readonly #ttlMs: number;
  readonly #now: () => number;

  constructor(key: Uint8Array, ttlMs: number, now: () => number = Date.now) {
    if (key.byteLength < 32) throw new Error("a token key needs at least 32 bytes");
    this.#key = key;
    this.#ttlMs = ttlMs;
    this.#now = now;
  }

  get ttlSeconds(): number {
    return Math.floor(this.#ttlMs / 1000);
  }

  issue(sub: string, access: Record<string, Action[]>): { token: string; claims: TokenClaims } {
    const iat = Math.floor(this.#now() / 1000);
    const claims: TokenClaims = { sub, iat, exp: iat + this.ttlSeconds, access };
    const payload = Buffer.from(JSON.stringify(claims)).toString("base64url");
    return { token: `${payload}.${this.#sign(payload)}`, claims };
  }

  /** The claims of a genuine, unexpired token, else null (never throws). */
  verify(token: string): TokenClaims | null {
    if (token.length > MAX_TOKEN_CHARS) return null;
    const dot = token.indexOf(".");
    if (dot <= 0) return null;
    const payload = token.slice(0, dot);
    const given = Buffer.from(token.slice(dot + 1), "base64url");
    const expected = Buffer.from(this.#sign(payload), "base64url");
    if (given.byteLength !== expected.byteLength || !timingSafeEqual(given, expected)) return null;
    let claims: TokenClaims;
    try {
      claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8"));
    } catch {
      return null;
    }
    if (
      typeof claims !== "object" || claims === null || typeof claims.sub !== "string" ||
      typeof claims.exp !== "number" || typeof claims.access !== "object" || claims.access === null
    ) return null;
    return this.#now() / 1000 < claims.exp ? claims : null;
  }

  #sign(payload: string): string {
    return createHmac("sha256", this.#key).update(payload).digest("base64url");
  }
}

/** The signing key: the secret file's bytes, or 32 random bytes for this process only. */
export async function tokenKey(secretFile: string | undefined): Promise<Uint8Array> {
  if (secretFile === undefined) return crypto.getRandomValues(new Uint8Array(32));
  const bytes = await Deno.readFile(secretFile);
  if (bytes.byteLength < 32) {
    throw new Error(`${secretFile}: a token secret needs at least 32 bytes`);
  }
  return bytes;
}
