/**
 * The upstream client: fetches manifests, blobs and tag lists from the registry behind a
 * namespace, with token/Basic authentication, manual redirects (Authorization never follows to
 * another host), connect and body-stall timeouts, SSRF checks for implicit upstreams and
 * per-upstream TLS options.
 *
 * This module is the request flow: names checked before they become URL paths, a turn within
 * the namespace's bounds (limits.ts), the endpoint to ask (endpoints.ts), retries, and the one
 * re-send a 401 calls for. The pieces it composes: transport.ts (one HTTP exchange: redirects,
 * deadlines, TLS), authorizer.ts (the mirror's tokens and credentials), errors.ts (what a
 * failed answer means) and access.ts (pass-through checks of a client's own credentials).
 *
 * Transient failures (connection errors, 408, 429, 5xx gateway answers) are retried with
 * jittered backoff within a time budget (retry.ts), before any byte reaches a client. What
 * upstreams say about their rate limits is kept (rate_limits.ts): while one asks not to be
 * called (429 Retry-After), requests to it fail at once with 429 and the time left, and the
 * mirror asks `quotaLow` before spending quota on revalidation.
 *
 * Every returned Response is 2xx with its body untouched and streaming (wrapped only to detect
 * stalls). Everything else becomes a RegistryError; bodies of responses not returned are always
 * cancelled. Credentials and tokens never appear in messages or logs.
 */
import type { LogFn } from "../runtime/log.ts";
import {
  DEFAULT_RATE_LIMIT_RESERVE,
  type UpstreamConfig,
  type UpstreamRegistry,
} from "../config/upstreams.ts";
import { RegistryError } from "../oci/errors.ts";
import { isDigest } from "../oci/digest.ts";
import { assertManifestReference, isUpstreamHost, isValidRepository } from "../oci/reference.ts";
import { AddressPolicy } from "./address_policy.ts";
import { EndpointHealth, endpointsOf } from "./endpoints.ts";
import { Limiter } from "./limits.ts";
import { rateLimitKey, rateLimitKeyOwner, RateLimits, type RateLimitState } from "./rate_limits.ts";
import {
  DEFAULT_RETRY_POLICY,
  retryDelayMs,
  type RetryPolicy,
  sleep,
  transientHint,
} from "./retry.ts";
import { DEFAULT_USER_AGENT, discard, Transport, upstreamOrigin } from "./transport.ts";
import { tokenCacheKey } from "./auth.ts";
import { Authorizer } from "./authorizer.ts";
import { type FailedRequest, responseError, throttled } from "./errors.ts";
import {
  AccessChecker,
  type AccessProbe,
  type AccessVerdict,
  type ClientCredentials,
} from "./access.ts";

export interface UpstreamClientOptions {
  /** Time allowed for connecting and receiving response headers, per hop. Default 10 s. */
  connectTimeoutMs?: number;
  /** Time a response body may stall (no chunk arrives) before it errors. Default 30 s. */
  idleTimeoutMs?: number;
  /** Let implicit upstreams resolve to loopback/private/link-local addresses. Default false. */
  allowPrivateAddresses?: boolean;
  log?: LogFn;
  /** Replaces the address policy for implicit upstreams (tests). */
  addressPolicy?: Pick<AddressPolicy, "check">;
  /** Retries of transient failures; default DEFAULT_RETRY_POLICY. */
  retry?: RetryPolicy;
}

/** One request for `what` (upstream, repository, 404 code: see FailedRequest). */
interface Target extends FailedRequest {
  /** Path after `/v2/<repository>/`, with query. */
  path: string;
  method: "GET" | "HEAD";
  headers: Headers;
  signal?: AbortSignal;
  /** False: no retries (the caller has a cached answer to fall back on). Default true. */
  retry?: boolean;
  /** Called once when the returned body has been read, cancelled or has failed. */
  onBodyEnd?: () => void;
}

export type { AccessProbe, AccessVerdict, ClientCredentials } from "./access.ts";
export { DEFAULT_USER_AGENT, withIdleTimeout } from "./transport.ts";

export class UpstreamClient {
  readonly #upstreams: UpstreamRegistry;
  readonly #log: LogFn;
  /** One HTTP exchange with an upstream: redirects, deadlines, TLS choice. */
  readonly #transport: Transport;
  /** The mirror's own credentials and tokens: what to send, how to answer a 401. */
  readonly #auth: Authorizer;
  /** Pass-through checks of a client's own credentials. */
  readonly #access: AccessChecker;
  readonly #retry: RetryPolicy;
  /** Which endpoints of failover namespaces are skipped for now. */
  readonly #health: EndpointHealth;
  /** Bounds of the namespaces that configure any (max_concurrent_requests, ...). */
  readonly #limiters = new Map<string, Limiter>();
  /** Upstream rate limits, by namespace and credential (see `rateLimitKey`). */
  readonly rateLimits: RateLimits;
  #closed = false;

  constructor(upstreams: UpstreamRegistry, options: UpstreamClientOptions = {}) {
    this.#upstreams = upstreams;
    this.#log = options.log ?? (() => {});
    this.#transport = new Transport({
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      idleTimeoutMs: options.idleTimeoutMs ?? 30_000,
      log: this.#log,
      policy: options.addressPolicy ??
        new AddressPolicy({ allowPrivateAddresses: options.allowPrivateAddresses }),
    });
    this.#retry = options.retry ?? DEFAULT_RETRY_POLICY;
    this.#auth = new Authorizer(this.#transport, this.#log);
    this.#access = new AccessChecker(this.#transport, this.#auth);
    this.#health = new EndpointHealth(this.#log);
    this.rateLimits = new RateLimits();
  }

  #limiterOf(upstream: UpstreamConfig): Limiter | undefined {
    if (!upstream.limits) return undefined;
    let limiter = this.#limiters.get(upstream.namespace);
    if (!limiter) {
      limiter = new Limiter(upstream.namespace, upstream.limits);
      this.#limiters.set(upstream.namespace, limiter);
    }
    return limiter;
  }

  /** The endpoint to ask now: the first neither failing nor rate-limited (endpoints.ts). */
  #pick(endpoints: UpstreamConfig[]): UpstreamConfig {
    return this.#health.pick(endpoints, (e) => this.rateLimits.waitMs(rateLimitKey(e)) > 0);
  }

  /** What each upstream said of its rate limit, for metrics: no user names, only their kind. */
  rateLimitStates(): {
    namespace: string;
    credential: "configured" | "anonymous";
    state: RateLimitState;
  }[] {
    return this.rateLimits.entries().map(([key, state]) => ({ ...rateLimitKeyOwner(key), state }));
  }

  /**
   * Whether the namespace's upstream quota is at or below its `rate_limit_reserve`, or it asked
   * not to be called for now: cached content should then be served without asking it.
   */
  quotaLow(namespace: string): boolean {
    const upstream = this.#upstreams.get(namespace);
    const reserve = upstream.rateLimitReserve ?? DEFAULT_RATE_LIMIT_RESERVE;
    // The quota that counts is that of the endpoint a request would go to now.
    const endpoint = this.#pick(endpointsOf(upstream));
    return this.rateLimits.isLow(rateLimitKey(endpoint), reserve);
  }

  /** Every endpoint of the failover namespaces (`hosts:`), and whether it is in use. */
  endpointStates(): { namespace: string; host: string; up: boolean }[] {
    return this.#upstreams.configured().filter((u) => (u.endpoints?.length ?? 0) > 1)
      .flatMap((upstream) =>
        endpointsOf(upstream).map((endpoint) => ({
          namespace: upstream.namespace,
          host: endpoint.host,
          up: this.#health.isUp(endpoint),
        }))
      );
  }

  /** GET or HEAD `/v2/<repository>/manifests/<reference>`; `accept` becomes the Accept header. */
  manifest(
    namespace: string,
    repository: string,
    reference: string,
    init: { method: "GET" | "HEAD"; accept: string[]; signal?: AbortSignal; retry?: boolean },
  ): Promise<Response> {
    // Checked again here (api/ checked already) because these strings become URL paths.
    try {
      assertManifestReference(reference);
    } catch (e) {
      return Promise.reject(e);
    }
    const headers = new Headers();
    if (init.accept.length > 0) headers.set("accept", init.accept.join(", "));
    return this.#request(namespace, repository, {
      path: `manifests/${reference}`,
      method: init.method,
      headers,
      signal: init.signal,
      retry: init.retry,
      notFound: "MANIFEST_UNKNOWN",
      what: `manifest ${repository}${reference.includes(":") ? "@" : ":"}${reference}`,
    });
  }

  /** GET or HEAD `/v2/<repository>/blobs/<digest>`, following redirects to storage/CDN hosts. */
  blob(
    namespace: string,
    repository: string,
    digest: string,
    init: { method: "GET" | "HEAD"; signal?: AbortSignal; range?: string; retry?: boolean },
  ): Promise<Response> {
    if (!isDigest(digest)) return Promise.reject(invalidDigest(digest));
    const headers = new Headers();
    if (init.range) headers.set("range", init.range);
    return this.#request(namespace, repository, {
      path: `blobs/${digest}`,
      method: init.method,
      headers,
      signal: init.signal,
      retry: init.retry,
      notFound: "BLOB_UNKNOWN",
      what: `blob ${digest} in ${repository}`,
    });
  }

  /** GET `/v2/<repository>/tags/list`, passing through only `n` and `last`. */
  tags(
    namespace: string,
    repository: string,
    query: URLSearchParams,
    signal?: AbortSignal,
  ): Promise<Response> {
    const forwarded = new URLSearchParams();
    for (const key of ["n", "last"]) {
      const value = query.get(key);
      if (value !== null) forwarded.set(key, value);
    }
    const search = forwarded.toString();
    return this.#request(namespace, repository, {
      path: `tags/list${search ? `?${search}` : ""}`,
      method: "GET",
      headers: new Headers({ accept: "application/json" }),
      signal,
      notFound: "NAME_UNKNOWN",
      what: `repository ${repository}`,
    });
  }

  /**
   * GET `/v2/<repository>/referrers/<digest>` (unfiltered: the caller filters and caches). A 404
   * means the upstream has no referrers API (MANIFEST_UNKNOWN).
   */
  referrers(
    namespace: string,
    repository: string,
    digest: string,
    signal?: AbortSignal,
  ): Promise<Response> {
    if (!isDigest(digest)) return Promise.reject(invalidDigest(digest));
    return this.#request(namespace, repository, {
      path: `referrers/${digest}`,
      method: "GET",
      headers: new Headers({ accept: "application/vnd.oci.image.index.v1+json" }),
      signal,
      notFound: "MANIFEST_UNKNOWN",
      what: `referrers of ${digest} in ${repository}`,
    });
  }

  /**
   * Asks upstream whether `credentials` (a client's, not the configured ones) may pull from
   * `repository`: a HEAD of the manifest or blob the client wants (or a one-entry tag list),
   * answering the upstream's Basic or Bearer challenge with those credentials (access.ts); a
   * `login` probe asks the upstream's `GET /v2/` instead (`repository` is then ignored).
   * Within the namespace's bounds and rate limits, at the endpoint a request would go to now.
   * Unreachable or failing upstreams throw (UNAVAILABLE, UPSTREAM_ERROR, TOOMANYREQUESTS), with
   * no retries: the caller decides what an unanswered check means.
   */
  async checkAccess(
    namespace: string,
    repository: string,
    probe: AccessProbe,
    credentials: ClientCredentials,
    signal?: AbortSignal,
  ): Promise<AccessVerdict> {
    if (probe.kind === "login") this.#assertOpen();
    else this.#assertUsable(repository);
    if (probe.kind === "manifest") assertManifestReference(probe.reference);
    if (probe.kind === "blob" && !isDigest(probe.digest)) throw invalidDigest(probe.digest);
    const configured = this.#upstreams.get(namespace);
    const release = await this.#limiterOf(configured)?.acquire(signal);
    try {
      const endpoint = this.#pick(endpointsOf(configured));
      const waitMs = this.rateLimits.waitMs(rateLimitKey(endpoint));
      if (waitMs > 0) throw throttled(endpoint, waitMs);
      // The endpoint as configured, but with the client's credentials: they alone are sent.
      return await this.#access.check({ ...endpoint, ...credentials }, repository, probe, signal);
    } finally {
      release?.();
    }
  }

  /** Throws unless the client is open and `repository` a valid name (it becomes a URL path). */
  #assertUsable(repository: string): void {
    this.#assertOpen();
    if (!isValidRepository(repository)) {
      throw new RegistryError(
        "NAME_INVALID",
        `invalid repository name ${JSON.stringify(repository)}`,
      );
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw new RegistryError("UNAVAILABLE", "upstream client is closed");
  }

  /** Releases pooled connections and cached tokens. Later requests fail with UNAVAILABLE. */
  close(): void {
    this.#closed = true;
    this.#transport.close();
    this.#auth.close();
  }

  async #request(
    namespace: string,
    repository: string,
    request: Omit<Target, "upstream" | "repository">,
  ): Promise<Response> {
    this.#assertUsable(repository);
    const upstream = this.#upstreams.get(namespace);
    if (!isUpstreamHost(upstream.host)) {
      throw new RegistryError(
        "NAME_INVALID",
        `invalid upstream host ${JSON.stringify(upstream.host)} for namespace ${namespace}`,
      );
    }
    // A turn within the upstream's bounds, held until the body is read (or on failure).
    const release = await this.#limiterOf(upstream)?.acquire(request.signal);
    try {
      return await this.#withRetries(upstream, repository, { ...request, onBodyEnd: release });
    } catch (e) {
      release?.();
      throw e;
    }
  }

  /** The request to the endpoint that should answer, retried and failed over as needed. */
  async #withRetries(
    upstream: UpstreamConfig,
    repository: string,
    request: Omit<Target, "upstream" | "repository">,
  ): Promise<Response> {
    const endpoints = endpointsOf(upstream);
    const started = performance.now();
    for (let retry = 1;; retry++) {
      const endpoint = this.#pick(endpoints);
      const limitKey = rateLimitKey(endpoint);
      const waitMs = this.rateLimits.waitMs(limitKey);
      if (waitMs > 0) throw throttled(endpoint, waitMs);
      try {
        const response = await this.#attempt(
          { ...request, upstream: endpoint, repository },
          limitKey,
        );
        this.#health.succeeded(endpoint);
        return response;
      } catch (e) {
        const hint = e instanceof RegistryError ? transientHint(e) : undefined;
        if (!hint || request.signal?.aborted) throw e;
        if (endpoints.length > 1) {
          this.#health.failed(endpoint, (e as Error).message);
          // Another endpoint may answer at once: failing over costs no retry and no delay.
          if (this.#health.hasAlternative(endpoints, endpoint)) {
            retry--;
            continue;
          }
        }
        if (request.retry === false) throw e;
        const delay = retryDelayMs(
          this.#retry,
          retry,
          performance.now() - started,
          hint.retryAfterMs,
        );
        if (delay === undefined) throw e;
        this.#log(
          `upstream ${upstream.namespace}: ${request.what}: ${
            (e as Error).message
          }; retry ${retry} in ${delay} ms`,
          "debug",
        );
        await sleep(delay, request.signal);
      }
    }
  }

  /** One try: the request, and the one re-send a 401 challenge calls for. */
  async #attempt(target: Target, limitKey: string): Promise<Response> {
    const { upstream, repository } = target;
    const request = target;
    const url = new URL(`${upstreamOrigin(upstream)}/v2/${repository}/${request.path}`);
    // An upstream that is itself a mirror needs to be told which registry is meant.
    if (upstream.forwardNamespace) url.searchParams.set("ns", upstream.namespace);
    const tokenKey = tokenCacheKey(upstream, repository);
    let authorization = this.#auth.proactive(upstream, tokenKey);

    for (let attempt = 0;; attempt++) {
      const headers = new Headers(request.headers);
      headers.set("user-agent", upstream.userAgent ?? DEFAULT_USER_AGENT);
      // Fetch would otherwise negotiate gzip/br and decompress: digests are over the exact bytes.
      headers.set("accept-encoding", "identity");
      if (authorization) headers.set("authorization", authorization);
      const { response, url: finalUrl } = await this.#transport.follow(
        upstream,
        url,
        request.method,
        headers,
        request.signal,
      );
      this.rateLimits.observe(limitKey, response.status, response.headers);
      if (response.ok) {
        return this.#transport.deliver(
          response,
          upstream,
          finalUrl,
          request.signal,
          request.onBodyEnd,
        );
      }
      if (response.status === 401 && attempt === 0 && finalUrl.host === url.host) {
        const challenge = response.headers.get("www-authenticate") ?? "";
        await discard(response);
        authorization = await this.#auth.authorize(target, tokenKey, challenge, authorization);
        continue;
      }
      throw await responseError(response, target, finalUrl, authorization !== undefined);
    }
  }
}

function invalidDigest(digest: string): RegistryError {
  return new RegistryError("DIGEST_INVALID", `invalid digest ${JSON.stringify(digest)}`);
}
