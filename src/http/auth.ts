/**
 * Who is asking, and may they: Basic credentials (checked against the htpasswd users, cached
 * briefly so a client sending them on every request costs one bcrypt comparison, not one each)
 * or a bearer token from the mirror's own token endpoint (GET /token, Docker token auth). Every
 * refusal is a RegistryError: 401 with a `Bearer` challenge for someone who is not (or no
 * longer, or not validly) authenticated, 403 DENIED for a user the rules refuse, 429 with
 * Retry-After for a login while locked out (login_limiter.ts).
 *
 * No message, log line or metric carries a password, token or hash; comparisons of secrets are
 * constant-time (bcrypt's own, HMAC via timingSafeEqual).
 */
import { Buffer } from "node:buffer";
import { createHmac } from "node:crypto";
import {
  type AccessControl,
  type AccessPolicy,
  type Action,
  ACTIONS,
  type Resource,
} from "../config/access.ts";
import { LruCache } from "../mirror/lru.ts";
import type { Metrics } from "../runtime/metrics.ts";
import { RegistryError } from "../oci/errors.ts";
import { LoginLimiter } from "./login_limiter.ts";
import {
  decodeBasic as decodeClientBasic,
  type PassthroughGate,
  passthroughKey,
} from "./passthrough.ts";
import { type TokenClaims, TokenSigner } from "./token.ts";

export interface Identity {
  /** The authenticated user, null for anonymous (with or without an anonymous token). */
  user: string | null;
  token?: TokenClaims;
  /** A login (see `identify`) with credentials a passthrough upstream accepted. */
  upstreamLogin?: boolean;
}

export const ANONYMOUS: Identity = { user: null };

/** How a resource is named inside tokens: unambiguous whatever name the client used. */
export function resourceKey(resource: Resource): string {
  return `${resource.hosted ? "hosted" : "mirror"}:${resource.namespace}/${resource.repository}`;
}

export interface AuthOptions {
  access: AccessControl;
  signer: TokenSigner;
  metrics: Metrics;
  now?: () => number;
  /** `auth: passthrough` namespaces: their scopes are checked against upstream, not the rules. */
  passthrough?: Pick<PassthroughGate, "covers" | "check" | "active" | "login">;
}

/** A verified login is trusted again without bcrypt for this long (until a reload). */
const LOGIN_CACHE_MS = 60_000;
const LOGIN_CACHE_ENTRIES = 1000;
/** Bounds on what is decoded at all: longer credentials are malformed, not checked. */
const MAX_BASIC_CHARS = 4096;
const MAX_SCOPES = 20;
/** The refusal of a password that is no mirror user's. */
const INVALID_LOGIN = "invalid username or password";

export class Auth {
  readonly #access: AccessControl;
  readonly #signer: TokenSigner;
  readonly #metrics: Metrics;
  readonly #now: () => number;
  readonly #limiter: LoginLimiter;
  readonly #passthrough?: Pick<PassthroughGate, "covers" | "check" | "active" | "login">;
  /** Keyed by an HMAC of generation, user and password under a per-process key. */
  readonly #logins = new LruCache<{ user: string; until: number }>(LOGIN_CACHE_ENTRIES);
  readonly #cacheKey = crypto.getRandomValues(new Uint8Array(32));

  constructor(options: AuthOptions) {
    this.#access = options.access;
    this.#signer = options.signer;
    this.#metrics = options.metrics;
    this.#now = options.now ?? Date.now;
    this.#limiter = new LoginLimiter(this.#now);
    this.#passthrough = options.passthrough;
  }

  /**
   * Who sent `request`. No Authorization header is anonymous; anything else must be valid
   * Basic credentials or a valid token (else 401 with the challenge for `scope`, or 429).
   * A `login` (the ping, a token for no repository: what `docker login` sends) may also be
   * made with credentials that are no mirror user's but a passthrough upstream's, checked there
   * (README, Pass-through): anonymous, with `upstreamLogin`.
   */
  async identify(
    request: Request,
    address: string,
    scope?: string,
    login = false,
  ): Promise<Identity> {
    const header = request.headers.get("authorization");
    if (header === null) return ANONYMOUS;
    const match = /^([A-Za-z]+) +([^ ]+) *$/.exec(header);
    const scheme = match?.[1].toLowerCase();
    if (scheme === "basic") {
      const credentials = decodeBasic(match![2]);
      if (!credentials) throw this.#refuse(request, "malformed", "malformed credentials", scope);
      const user = await this.#login(credentials, address, request, scope, login);
      return user === null ? { user, upstreamLogin: true } : { user };
    }
    if (scheme === "bearer") {
      const claims = this.#signer.verify(match![2]);
      if (!claims) throw this.#refuse(request, "bad_token", "invalid or expired token", scope);
      if (claims.sub !== "" && !this.#access.policy().hasUser(claims.sub)) {
        throw this.#refuse(request, "bad_token", "the token's user no longer exists", scope);
      }
      return { user: claims.sub === "" ? null : claims.sub, token: claims };
    }
    throw this.#refuse(request, "malformed", "unsupported or malformed Authorization", scope);
  }

  /** Whether `identity` may do `action` on `resource` now (rules, and the token's scope). */
  permits(identity: Identity, resource: Resource, action: Action): boolean {
    if (!this.allows(identity, resource, action)) return false;
    if (identity.user === null || !identity.token) return true;
    return identity.token.access[resourceKey(resource)]?.includes(action) ?? false;
  }

  /**
   * Whether the rules let `identity` do `action`, whatever its token's scopes: for what a
   * request touches besides its own repository (a mount's source, catalog entries), which
   * clients do not always ask a token for.
   */
  allows(identity: Identity, resource: Resource, action: Action): boolean {
    return this.#access.policy().allows(identity.user, resource, action);
  }

  /**
   * Throws unless `identity` may do `action` on `resource`; `name` is how the challenge names
   * it (a name the token endpoint resolves to the same resource). Called before any lookup, so
   * a refusal says nothing about whether the repository or the blob exists.
   */
  require(
    identity: Identity,
    request: Request,
    resource: Resource,
    action: Action,
    name: string,
  ): void {
    if (this.permits(identity, resource, action)) return;
    const scope = `repository:${name}:${action === "push" ? "pull,push" : action}`;
    const policy = this.#access.policy();
    if (identity.user === null) {
      throw new RegistryError("UNAUTHORIZED", "authentication required", {
        headers: this.challenge(request, scope),
      });
    }
    if (policy.allows(identity.user, resource, action)) {
      // Allowed, but this token was issued for other scopes: the client asks for a new one.
      throw new RegistryError("UNAUTHORIZED", "the token does not grant this", {
        headers: this.challenge(request, scope, "insufficient_scope"),
      });
    }
    throw new RegistryError("DENIED", `${action} on ${name} is not allowed for this user`);
  }

  /** GET /v2/: 401 with the challenge unless authenticated (see README, Authentication). */
  async ping(request: Request, address: string): Promise<void> {
    const identity = await this.identify(request, address, undefined, true);
    if (identity.user === null && !identity.token && !identity.upstreamLogin) {
      throw new RegistryError("UNAUTHORIZED", "authentication required", {
        headers: this.challenge(request),
      });
    }
  }

  /**
   * GET /token?service=...&scope=repository:NAME:pull,push: a token granting what the caller
   * (Basic credentials, or anonymous) may do of what it asked for. `resolve` names the resource
   * behind a scope name (null: not a repository name), the same way routing does.
   */
  async token(
    request: Request,
    address: string,
    query: URLSearchParams,
    resolve: (name: string) => Resource | null,
  ): Promise<Response> {
    if (request.headers.get("authorization")?.toLowerCase().startsWith("bearer")) {
      throw this.#refuse(request, "malformed", "the token endpoint takes Basic credentials");
    }
    const scopes = query.getAll("scope").flatMap((s) => s.split(" ")).filter((s) => s !== "");
    if (scopes.length > MAX_SCOPES) {
      throw new RegistryError("BAD_REQUEST", `at most ${MAX_SCOPES} scopes per token`);
    }
    const access: Record<string, Action[]> = {};
    let user: string | null = null;
    const { gated, others } = this.#splitScopes(scopes, resolve);
    // Only passthrough repositories asked for: the credentials are the client's upstream ones,
    // checked there (README, Pass-through); the mirror's users and rules play no part. Others
    // too: containerd adds a scope of its own to the challenge's, the repository without the
    // registry's name (`repository:team/app:pull` next to `repository:private.test/team/app:pull`).
    // When the upstream accepts the credentials, those others get what anonymous clients get;
    // when not, the mirror's rules answer the whole request, granting no passthrough scope.
    const upstreamAccepted = gated.length > 0 &&
      await this.#grantPassthrough(request, address, gated, access, others.length === 0);
    if (upstreamAccepted && others.length > 0) {
      const policy = this.#access.policy();
      for (const scope of others) grant(policy, null, scope, resolve, access);
    } else if (!upstreamAccepted && (gated.length === 0 || others.length > 0)) {
      // `podman login` / `docker login` ask a token for no repository.
      const login = scopes.every((scope) => !scope.startsWith("repository"));
      ({ user } = await this.identify(request, address, undefined, login));
      const policy = this.#access.policy();
      for (const scope of scopes) grant(policy, user, scope, resolve, access);
    }
    const { token, claims } = this.#signer.issue(user ?? "", access);
    const body = JSON.stringify({
      token,
      access_token: token,
      expires_in: this.#signer.ttlSeconds,
      issued_at: new Date(claims.iat * 1000).toISOString(),
    });
    return new Response(request.method === "HEAD" ? null : body, {
      headers: { "content-type": "application/json", "cache-control": "no-store" },
    });
  }

  /**
   * The repository scopes of `scopes` split into the passthrough resources they name (`gated`)
   * and the rest (`others`: other namespaces, hosted names, names that are no repository's).
   */
  #splitScopes(
    scopes: string[],
    resolve: (name: string) => Resource | null,
  ): { gated: { resource: Resource; actions: string[] }[]; others: string[] } {
    const gated: { resource: Resource; actions: string[] }[] = [];
    const others: string[] = [];
    for (const scope of scopes) {
      const first = scope.indexOf(":");
      const last = scope.lastIndexOf(":");
      if (first < 0 || last <= first || scope.slice(0, first) !== "repository") continue;
      let resource: Resource | null = null;
      try {
        resource = resolve(scope.slice(first + 1, last));
      } catch { /* not a repository name */ }
      if (!resource || resource.hosted || !this.#passthrough?.covers(resource.namespace)) {
        others.push(scope);
      } else {
        gated.push({ resource, actions: scope.slice(last + 1).split(",") });
      }
    }
    return { gated, others };
  }

  /**
   * Records upstream's verdict per passthrough scope in the token: pull granted, or an empty
   * list (checked and denied: requests get 403). Credentials upstream rejects get 401 here when
   * `only` (nothing but passthrough scopes asked for); otherwise nothing is recorded. Whether
   * upstream was asked and accepted the credentials (for access or not).
   */
  async #grantPassthrough(
    request: Request,
    address: string,
    gated: { resource: Resource; actions: string[] }[],
    access: Record<string, Action[]>,
    only: boolean,
  ): Promise<boolean> {
    const match = /^basic +([^ ]+) *$/i.exec(request.headers.get("authorization") ?? "");
    if (!match) return false; // anonymous: a token that grants nothing
    const credentials = decodeClientBasic(match[1]);
    if (!credentials) throw this.#refuse(request, "malformed", "malformed credentials");
    const verdicts: Record<string, Action[]> = {};
    for (const { resource, actions } of gated) {
      if (!actions.includes("pull") && !actions.includes("*")) continue;
      const verdict = await this.#passthrough!.check(
        credentials,
        address,
        resource.namespace,
        resource.repository,
        { kind: "tags" },
      );
      if (verdict === "unauthorized") {
        if (!only) return false;
        throw this.#refuse(
          request,
          "bad_credentials",
          "the upstream did not accept these credentials",
        );
      }
      verdicts[passthroughKey(resource.namespace, resource.repository)] = verdict === "allowed"
        ? ["pull"]
        : [];
    }
    Object.assign(access, verdicts);
    return Object.keys(verdicts).length > 0;
  }

  /** The WWW-Authenticate header that sends a client to the token endpoint. */
  challenge(request: Request, scope?: string, error?: string): Record<string, string> {
    const token = this.#access.token;
    let realm = token.realm;
    if (realm === undefined) {
      const url = new URL(request.url);
      const proto = request.headers.get("x-forwarded-proto");
      realm = `${
        proto === "https" || proto === "http" ? proto : url.protocol.slice(0, -1)
      }://${url.host}/token`;
    }
    let value = `Bearer realm="${realm}",service="${token.service}"`;
    if (scope) value += `,scope="${scope}"`;
    if (error) value += `,error="${error}"`;
    return { "www-authenticate": value };
  }

  /**
   * The mirror user `credentials` name, or null for a `login` with credentials that are no
   * mirror user's and that a passthrough upstream accepted. A wrong mirror password counts as
   * a failed login here; an upstream's verdict does not (the gate keeps its own count).
   */
  async #login(
    credentials: { user: string; password: string },
    address: string,
    request: Request,
    scope: string | undefined,
    login: boolean,
  ): Promise<string | null> {
    const { user, password } = credentials;
    const policy = this.#access.policy();
    const cacheKey = createHmac("sha256", this.#cacheKey)
      .update(`${policy.generation}\0${user}\0${password}`)
      .digest("base64");
    // Before the lockout: a password verified in the last minute is no guess, and a guesser
    // must not cut off a client that is already working.
    const cached = this.#logins.get(cacheKey);
    if (cached && cached.until > this.#now()) return cached.user;
    const keys = [`user:${user}`, `address:${address}`];
    const retryAfter = this.#limiter.retryAfter(keys);
    if (retryAfter > 0) {
      // Counted as a failure too: a burst keeps itself locked out instead of waiting it out.
      this.#limiter.failed(keys);
      this.#metrics.authFailures.inc({ reason: "locked" });
      throw new RegistryError("TOOMANYREQUESTS", "too many failed logins; try again later", {
        headers: { "retry-after": String(retryAfter) },
      });
    }
    this.#limiter.started(keys);
    let valid: boolean;
    try {
      valid = await policy.verifyPassword(user, password);
    } finally {
      this.#limiter.finished(keys);
    }
    if (valid) {
      this.#limiter.succeeded([keys[0]]);
      this.#logins.set(cacheKey, { user, until: this.#now() + LOGIN_CACHE_MS });
      return user;
    }
    // A mirror user's name with a wrong password is never asked of an upstream.
    const upstreamLogin = login && this.#passthrough?.active === true && !policy.hasUser(user);
    if (upstreamLogin && await this.#passthrough!.login({ username: user, password }, address)) {
      return null;
    }
    // An upstream's refusal is counted by the gate, per address and user name: counted here
    // too, a few wrong upstream passwords behind one NAT would lock out every login from it.
    if (!upstreamLogin) this.#limiter.failed(keys);
    throw this.#refuse(
      request,
      "bad_credentials",
      upstreamLogin ? "invalid username or password (here and upstream)" : INVALID_LOGIN,
      scope,
    );
  }

  #refuse(request: Request, reason: string, message: string, scope?: string): RegistryError {
    this.#metrics.authFailures.inc({ reason });
    return new RegistryError("UNAUTHORIZED", message, {
      headers: this.challenge(request, scope, reason === "bad_token" ? "invalid_token" : undefined),
    });
  }
}

/** `user:password` from a Basic payload, or null when it is not one. */
function decodeBasic(payload: string): { user: string; password: string } | null {
  if (payload.length > MAX_BASIC_CHARS || !/^[A-Za-z0-9+/]+={0,2}$/.test(payload)) return null;
  const text = Buffer.from(payload, "base64").toString("utf8");
  const colon = text.indexOf(":");
  if (colon <= 0) return null;
  return { user: text.slice(0, colon), password: text.slice(colon + 1) };
}

/** Adds what `user` may do of one requested scope (`repository:NAME:ACTIONS`) to `access`. */
function grant(
  policy: AccessPolicy,
  user: string | null,
  scope: string,
  resolve: (name: string) => Resource | null,
  access: Record<string, Action[]>,
): void {
  const first = scope.indexOf(":");
  const last = scope.lastIndexOf(":");
  if (first < 0 || last <= first) return;
  const type = scope.slice(0, first).replace(/\(.*\)$/, "");
  if (type !== "repository") return; // registry:catalog:* is answered per repository instead
  let resource: Resource | null;
  try {
    resource = resolve(scope.slice(first + 1, last));
  } catch {
    return; // not a repository name: nothing to grant
  }
  if (!resource) return;
  const wanted = scope.slice(last + 1).split(",");
  const actions = wanted.includes("*") ? ACTIONS : ACTIONS.filter((a) => wanted.includes(a));
  const key = resourceKey(resource);
  for (const action of actions) {
    if (!policy.allows(user, resource, action)) continue;
    access[key] ??= [];
    if (!access[key].includes(action)) access[key].push(action);
  }
}
