/**
 * Upstream authentication pieces: the WWW-Authenticate parser, the per-scope token cache with
 * single-flight token requests, and helpers for Basic credentials, token realms and token
 * responses. No I/O here: the HTTP round trips themselves live in authorizer.ts.
 */
import type { UpstreamConfig } from "../config/upstreams.ts";
import { RegistryError } from "../oci/errors.ts";
import { SingleFlight } from "../runtime/single_flight.ts";

/** One challenge of a WWW-Authenticate header. Scheme and parameter names are lower-cased. */
export interface Challenge {
  scheme: string;
  params: Record<string, string>;
  /** The token68 form (`Negotiate abc==`), rarely used by registries. */
  token68?: string;
}

const TCHAR = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;
const TOKEN68_CHAR = /[A-Za-z0-9\-._~+/]/;

/**
 * Parses a WWW-Authenticate value (RFC 9110 section 11.6.1) into its challenges. Handles
 * several challenges in one value (also what Headers.get makes of repeated headers), quoted
 * strings containing commas and escapes, and is lenient with unquoted values containing `:`
 * or `/` (some registries send `realm=https://...` unquoted). Garbage is skipped, never thrown.
 */
export function parseWwwAuthenticate(value: string): Challenge[] {
  const challenges: Challenge[] = [];
  let pos = 0;
  const n = value.length;
  const skipSpace = () => {
    while (pos < n && (value[pos] === " " || value[pos] === "\t")) pos++;
  };
  const skipSpaceAndCommas = () => {
    while (pos < n && (value[pos] === " " || value[pos] === "\t" || value[pos] === ",")) pos++;
  };
  const readToken = (): string => {
    const start = pos;
    while (pos < n && TCHAR.test(value[pos])) pos++;
    return value.slice(start, pos);
  };
  const readQuoted = (): string => {
    pos++; // opening quote
    let out = "";
    while (pos < n && value[pos] !== '"') {
      if (value[pos] === "\\" && pos + 1 < n) pos++;
      out += value[pos++];
    }
    pos++; // closing quote (or end)
    return out;
  };
  const readBareValue = (): string => {
    const start = pos;
    while (pos < n && value[pos] !== "," && value[pos] !== " " && value[pos] !== "\t") pos++;
    return value.slice(start, pos);
  };
  /** True when an auth-param (`token BWS "="`, not `==`) starts at the current position. */
  const atParam = (): boolean => {
    const save = pos;
    const name = readToken();
    skipSpace();
    const result = name.length > 0 && value[pos] === "=" && value[pos + 1] !== "=";
    pos = save;
    return result;
  };

  while (true) {
    skipSpaceAndCommas();
    if (pos >= n) break;
    const scheme = readToken();
    if (scheme.length === 0) {
      // Not a token: skip to the next comma and try again.
      while (pos < n && value[pos] !== ",") pos++;
      continue;
    }
    const challenge: Challenge = { scheme: scheme.toLowerCase(), params: {} };
    challenges.push(challenge);
    skipSpace();
    if (pos >= n || value[pos] === ",") {
      // Either a bare scheme, or the next item is a parameter of this challenge.
      if (pos < n) {
        const save = pos;
        skipSpaceAndCommas();
        if (!atParam()) {
          pos = save;
          continue;
        }
      } else {
        break;
      }
    } else if (!atParam()) {
      // token68
      const start = pos;
      while (pos < n && TOKEN68_CHAR.test(value[pos])) pos++;
      while (pos < n && value[pos] === "=") pos++;
      if (pos > start) challenge.token68 = value.slice(start, pos);
      while (pos < n && value[pos] !== ",") pos++;
      continue;
    }
    // auth-params until something that is not a parameter (the next challenge) or the end.
    while (pos < n) {
      const name = readToken().toLowerCase();
      skipSpace();
      pos++; // "="
      skipSpace();
      const paramValue = value[pos] === '"' ? readQuoted() : readBareValue();
      if (!(name in challenge.params)) challenge.params[name] = paramValue;
      skipSpace();
      // Skip anything unexpected up to the next comma.
      while (pos < n && value[pos] !== ",") pos++;
      const save = pos;
      skipSpaceAndCommas();
      if (pos >= n) break;
      if (!atParam()) {
        pos = save;
        break;
      }
    }
  }
  return challenges;
}

/** `Basic base64(user:password)` with the UTF-8 encoding of the credentials. */
export function basicAuthorization(username: string, password: string): string {
  const bytes = new TextEncoder().encode(`${username}:${password}`);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return `Basic ${btoa(binary)}`;
}

/** The pull scope for a repository, as registries expect it in token requests. */
export function pullScope(repository: string): string {
  return `repository:${repository}:pull`;
}

/** Whether the upstream has credentials configured (user name and password). */
export function hasCredentials(upstream: UpstreamConfig): boolean {
  return upstream.username !== undefined && upstream.password !== undefined;
}

/** realm?service=..&scope=.. from a Bearer challenge (an http(s) realm, else UPSTREAM_ERROR). */
export function tokenRealm(
  upstream: UpstreamConfig,
  challenge: Challenge,
  scope: string | undefined,
): URL {
  let realm: URL;
  try {
    realm = new URL(challenge.params.realm ?? "");
  } catch {
    throw new RegistryError(
      "UPSTREAM_ERROR",
      `upstream ${upstream.host} sent a Bearer challenge without a valid realm`,
    );
  }
  if (realm.protocol !== "https:" && realm.protocol !== "http:") {
    throw new RegistryError(
      "UPSTREAM_ERROR",
      `upstream ${upstream.host} sent a token realm that is not http(s)`,
    );
  }
  realm.hash = "";
  if (challenge.params.service) realm.searchParams.set("service", challenge.params.service);
  if (scope !== undefined) realm.searchParams.set("scope", scope);
  return realm;
}

/** The token cache's key: a token is good for one upstream endpoint and one pull scope. */
export function tokenCacheKey(upstream: UpstreamConfig, repository: string): string {
  return `${upstream.namespace}\n${upstream.host}\n${pullScope(repository)}`;
}

export interface IssuedToken {
  token: string;
  /** Lifetime in milliseconds as the token server stated it (default 60 s). */
  lifetimeMs: number;
}

/**
 * Reads a token server's JSON answer: `token` or `access_token`, and `expires_in` seconds
 * (default 60). Returns undefined when there is no usable token.
 */
export function parseTokenResponse(body: unknown): IssuedToken | undefined {
  if (typeof body !== "object" || body === null) return undefined;
  const record = body as Record<string, unknown>;
  const token = typeof record.token === "string" && record.token !== ""
    ? record.token
    : typeof record.access_token === "string" && record.access_token !== ""
    ? record.access_token
    : undefined;
  if (token === undefined) return undefined;
  const expiresIn = typeof record.expires_in === "number" && Number.isFinite(record.expires_in) &&
      record.expires_in > 0
    ? record.expires_in
    : 60;
  return { token, lifetimeMs: expiresIn * 1000 };
}

export interface TokenCacheOptions {
  /** Clock (tests). */
  now?: () => number;
  maxEntries?: number;
}

interface CachedToken {
  token: string;
  expiresAt: number;
}

/**
 * Bearer tokens per key (upstream + scope), each kept until its lifetime minus a safety margin
 * (10 % of the lifetime, at most 30 s), so a token is never sent just as it expires. Concurrent
 * callers needing the same key share one token request.
 */
export class TokenCache {
  readonly #now: () => number;
  readonly #maxEntries: number;
  readonly #entries = new Map<string, CachedToken>();
  readonly #pending = new SingleFlight<string>();

  constructor(options: TokenCacheOptions = {}) {
    this.#now = options.now ?? Date.now;
    this.#maxEntries = options.maxEntries ?? 4096;
  }

  /** The cached, unexpired token for `key`, if any. */
  get(key: string): string | undefined {
    const entry = this.#entries.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= this.#now()) {
      this.#entries.delete(key);
      return undefined;
    }
    return entry.token;
  }

  /**
   * A token for `key`: the cached one unless it is `rejected` (a token upstream just refused),
   * else the result of a request already in flight for `key`, else a new request via `issue`.
   * A failed request is not cached; the next caller tries again.
   */
  obtain(key: string, issue: () => Promise<IssuedToken>, rejected?: string): Promise<string> {
    const cached = this.get(key);
    if (cached !== undefined && cached !== rejected) return Promise.resolve(cached);
    if (cached !== undefined) this.#entries.delete(key);
    return this.#pending.run(key, async () => {
      const issued = await issue();
      const margin = Math.min(30_000, issued.lifetimeMs * 0.1);
      this.#store(key, {
        token: issued.token,
        expiresAt: this.#now() + issued.lifetimeMs - margin,
      });
      return issued.token;
    });
  }

  /** Forgets `token` for `key` (upstream refused it). */
  invalidate(key: string, token: string): void {
    if (this.#entries.get(key)?.token === token) this.#entries.delete(key);
  }

  get size(): number {
    return this.#entries.size;
  }

  clear(): void {
    this.#entries.clear();
  }

  #store(key: string, entry: CachedToken): void {
    this.#entries.delete(key);
    this.#entries.set(key, entry);
    if (this.#entries.size <= this.#maxEntries) return;
    const now = this.#now();
    for (const [k, v] of this.#entries) if (v.expiresAt <= now) this.#entries.delete(k);
    for (const k of this.#entries.keys()) {
      if (this.#entries.size <= this.#maxEntries) break;
      this.#entries.delete(k);
    }
  }
}
