/**
 * How the mirror authorizes itself to an upstream: what it sends before any challenge (a cached
 * token, or Basic credentials to an upstream that asked for them once), how it answers a 401
 * (a Bearer token from the challenge's realm, shared by concurrent callers and cached per scope,
 * or Basic credentials), and the token requests themselves, for the mirror's configured
 * credentials and for a client's own (pass-through checks, access.ts). The parsing and the
 * cache are in auth.ts; the round trips go through the transport.
 *
 * Credentials go to a token realm only over https, or over http when the upstream itself is
 * plain http (a lab registry); a client's credentials never go to a plain-http realm of a TLS
 * upstream. Tokens and passwords never appear in messages or logs.
 */
import type { UpstreamConfig } from "../config/upstreams.ts";
import type { LogFn } from "../runtime/log.ts";
import { RegistryError } from "../oci/errors.ts";
import {
  basicAuthorization,
  type Challenge,
  hasCredentials,
  type IssuedToken,
  parseTokenResponse,
  parseWwwAuthenticate,
  pullScope,
  TokenCache,
  tokenRealm,
} from "./auth.ts";
import { errorSummary, rejectedCredentials, secretsOf, tooManyRequests } from "./errors.ts";
import { DEFAULT_USER_AGENT, discard, readText, type Transport } from "./transport.ts";

const MAX_TOKEN_RESPONSE_BYTES = 1 << 20;

/** The authorizer's requests go through these (a Transport; a fake in tests). */
export type TokenTransport = Pick<Transport, "follow" | "guard">;

export class Authorizer {
  readonly #transport: TokenTransport;
  readonly #log: LogFn;
  readonly #tokens = new TokenCache();
  /** Upstreams (by namespace) that asked for Basic: credentials are sent up front next time. */
  readonly #basicUpstreams = new Set<string>();

  constructor(transport: TokenTransport, log: LogFn) {
    this.#transport = transport;
    this.#log = log;
  }

  /** Whether the namespace's upstream asked for Basic before (credentials go up front). */
  wantsBasic(namespace: string): boolean {
    return this.#basicUpstreams.has(namespace);
  }

  /** The namespace's upstream answered with a Basic challenge. */
  noteBasic(namespace: string): void {
    this.#basicUpstreams.add(namespace);
  }

  /** What to send before any challenge: a cached token, or Basic for an upstream that asked. */
  proactive(upstream: UpstreamConfig, tokenKey: string): string | undefined {
    const token = this.#tokens.get(tokenKey);
    if (token !== undefined) return `Bearer ${token}`;
    if (this.wantsBasic(upstream.namespace) && hasCredentials(upstream)) {
      return basicAuthorization(upstream.username!, upstream.password!);
    }
    return undefined;
  }

  /** Answers a 401: a (possibly shared, possibly cached) bearer token, or Basic credentials. */
  async authorize(
    target: { upstream: UpstreamConfig; repository: string; signal?: AbortSignal },
    tokenKey: string,
    header: string,
    sent: string | undefined,
  ): Promise<string> {
    const { upstream, repository } = target;
    const challenges = parseWwwAuthenticate(header);
    const bearer = challenges.find((c) => c.scheme === "bearer");
    if (bearer) {
      const rejected = sent?.startsWith("Bearer ") ? sent.slice(7) : undefined;
      const token = await raceSignal(
        this.#tokens.obtain(
          tokenKey,
          () => this.#issueToken(upstream, repository, bearer),
          rejected,
        ),
        target.signal,
      );
      return `Bearer ${token}`;
    }
    if (challenges.some((c) => c.scheme === "basic")) {
      if (!hasCredentials(upstream)) {
        throw new RegistryError(
          "UPSTREAM_ERROR",
          `upstream ${upstream.host} requires credentials for ${repository} and none are ` +
            `configured for namespace ${upstream.namespace}`,
        );
      }
      if (sent?.startsWith("Basic ")) throw rejectedCredentials(upstream, repository);
      this.noteBasic(upstream.namespace);
      return basicAuthorization(upstream.username!, upstream.password!);
    }
    throw new RegistryError(
      "UPSTREAM_ERROR",
      `upstream ${upstream.host} answered 401 without a usable WWW-Authenticate challenge`,
    );
  }

  /** GET realm?service=..&scope=repository:<repo>:pull, with Basic credentials if configured. */
  async #issueToken(
    upstream: UpstreamConfig,
    repository: string,
    challenge: Challenge,
  ): Promise<IssuedToken> {
    const scope = pullScope(repository);
    const realm = tokenRealm(upstream, challenge, scope);
    const headers = new Headers({
      "user-agent": upstream.userAgent ?? DEFAULT_USER_AGENT,
      accept: "application/json",
      "accept-encoding": "identity",
    });
    const withCredentials = hasCredentials(upstream) &&
      (realm.protocol === "https:" || !upstream.tls);
    if (withCredentials) {
      headers.set("authorization", basicAuthorization(upstream.username!, upstream.password!));
    } else if (hasCredentials(upstream)) {
      this.#log(
        `upstream ${upstream.namespace}: not sending credentials to plain-http token realm ${realm.host}`,
        "warn",
      );
    }
    // Not tied to any caller's signal: concurrent callers share this request.
    const { response } = await this.#transport.follow(upstream, realm, "GET", headers, undefined);
    if (!response.ok) {
      const status = response.status;
      const summary = await errorSummary(response, secretsOf(upstream));
      const where = `token server ${realm.host} for upstream ${upstream.host}`;
      if (status === 429) throw tooManyRequests(where, response, summary);
      if (status === 401 || status === 403) {
        throw new RegistryError(
          "UPSTREAM_ERROR",
          withCredentials
            ? `${where} rejected the mirror's credentials (${status})${summary}`
            : `${where} refused an anonymous token for ${scope} (${status})${summary}`,
        );
      }
      throw new RegistryError("UPSTREAM_ERROR", `${where} answered ${status}${summary}`);
    }
    const issued = await this.#readToken(response, upstream, realm);
    this.#log(
      `upstream ${upstream.namespace}: got ${
        withCredentials ? "an authenticated" : "an anonymous"
      } token for ${scope} (expires in ${Math.round(issued.lifetimeMs / 1000)}s)`,
      "debug",
    );
    return issued;
  }

  /** A token for the client's credentials alone, or what the token server said of them. */
  async clientToken(
    upstream: UpstreamConfig,
    repository: string | null,
    challenge: Challenge,
    signal: AbortSignal | undefined,
  ): Promise<string | "unauthorized" | "denied"> {
    // No repository: a login's token, for no scope (what `docker login` asks for).
    const realm = tokenRealm(
      upstream,
      challenge,
      repository === null ? undefined : pullScope(repository),
    );
    if (realm.protocol !== "https:" && upstream.tls) {
      throw new RegistryError(
        "UPSTREAM_ERROR",
        `upstream ${upstream.host} sent a plain-http token realm: client credentials are not ` +
          `sent there`,
      );
    }
    const headers = new Headers({
      "user-agent": upstream.userAgent ?? DEFAULT_USER_AGENT,
      accept: "application/json",
      "accept-encoding": "identity",
      authorization: basicAuthorization(upstream.username!, upstream.password!),
    });
    const { response } = await this.#transport.follow(upstream, realm, "GET", headers, signal);
    if (response.status === 401 || response.status === 403) {
      await discard(response);
      return response.status === 401 ? "unauthorized" : "denied";
    }
    return (await this.#readToken(response, upstream, realm)).token;
  }

  /** The token in a token server's 2xx answer; anything else is UPSTREAM_ERROR (or 429). */
  async #readToken(response: Response, upstream: UpstreamConfig, realm: URL): Promise<IssuedToken> {
    if (!response.ok) {
      const status = response.status;
      const summary = await errorSummary(response, secretsOf(upstream));
      const where = `token server ${realm.host} for upstream ${upstream.host}`;
      if (status === 429) throw tooManyRequests(where, response, summary);
      throw new RegistryError("UPSTREAM_ERROR", `${where} answered ${status}${summary}`);
    }
    const text = !response.body ? "" : await readText(
      this.#transport.guard(response, upstream, realm, undefined),
      MAX_TOKEN_RESPONSE_BYTES,
    ).catch((e) => {
      if (e instanceof RegistryError) throw e;
      throw new RegistryError(
        "UPSTREAM_ERROR",
        `token server ${realm.host} sent an unreadable answer`,
      );
    });
    let issued: IssuedToken | undefined;
    try {
      issued = parseTokenResponse(JSON.parse(text));
    } catch {
      issued = undefined;
    }
    if (!issued) {
      throw new RegistryError(
        "UPSTREAM_ERROR",
        `token server ${realm.host} for upstream ${upstream.host} answered without a token`,
      );
    }
    return issued;
  }

  /** Forgets every cached token. */
  close(): void {
    this.#tokens.clear();
  }
}

/** Resolves like `promise`, or rejects with the signal's reason as soon as it aborts. */
function raceSignal<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
