/**
 * Pass-through checks: whether a client's own upstream credentials may pull from a repository,
 * asked of the upstream itself. The probe is a HEAD of the manifest or blob the client wants
 * (or a one-entry tag list), sent with those credentials alone; the upstream's Basic or Bearer
 * challenge is answered with them too. A token obtained here is used once and never enters the
 * shared token cache, and nothing of it is logged.
 *
 * A 404 for the object asks the tag list once more: distribution answers 404 for a deleted tag
 * to a client that may read the repository, other registries 404 for "not yours". A login
 * probe's token request names no scope, as a client's login does; any verdict but
 * `unauthorized` means the upstream took the credentials. No retries here:
 * UpstreamClient.checkAccess picks the endpoint and keeps to the namespace's bounds.
 */
import type { UpstreamConfig } from "../config/upstreams.ts";
import { RegistryError } from "../oci/errors.ts";
import { ALL_MANIFEST_TYPES } from "../oci/media_types.ts";
import { basicAuthorization, parseWwwAuthenticate } from "./auth.ts";
import type { Authorizer } from "./authorizer.ts";
import { errorSummary, secretsOf, tooManyRequests } from "./errors.ts";
import {
  DEFAULT_USER_AGENT,
  describeHost,
  discard,
  type Transport,
  upstreamHost,
  upstreamOrigin,
} from "./transport.ts";

/**
 * What a pass-through check asks upstream for, with the client's own credentials: a manifest,
 * a blob or the tag list of a repository, or (`login`, for a client logging in to the mirror)
 * the upstream's own `GET /v2/`, answered like `docker login` answers it.
 */
export type AccessProbe =
  | { kind: "manifest"; reference: string }
  | { kind: "blob"; digest: string }
  | { kind: "tags" }
  | { kind: "login" };

/**
 * What upstream said of a client's credentials for a repository: they may pull, they are not
 * valid (401), or they are valid but lack access (403, a token without the scope, or 404).
 */
export type AccessVerdict = "allowed" | "unauthorized" | "denied";

/** A client's own upstream credentials (never logged, never cached as such). */
export interface ClientCredentials {
  username: string;
  password: string;
}

/** The repository-level pass-through probe: one tag is enough to prove pull rights. */
const TAG_PROBE = "tags/list?n=1";

export class AccessChecker {
  readonly #transport: Pick<Transport, "follow">;
  readonly #auth: Pick<Authorizer, "wantsBasic" | "noteBasic" | "clientToken">;

  constructor(
    transport: Pick<Transport, "follow">,
    auth: Pick<Authorizer, "wantsBasic" | "noteBasic" | "clientToken">,
  ) {
    this.#transport = transport;
    this.#auth = auth;
  }

  /**
   * What `upstream` (an endpoint carrying the client's credentials) says of them for
   * `repository` (ignored by a login probe); names and digests are checked by the caller.
   */
  async check(
    upstream: UpstreamConfig,
    repository: string,
    probe: AccessProbe,
    signal: AbortSignal | undefined,
  ): Promise<AccessVerdict> {
    if (probe.kind === "login") {
      const verdict = await this.#probe(upstream, null, "", "GET", signal);
      if (verdict !== "not_found") return verdict;
      throw new RegistryError(
        "UPSTREAM_ERROR",
        `upstream ${upstream.host} answered 404 to GET /v2/: no registry API there`,
      );
    }
    const path = probe.kind === "manifest"
      ? `manifests/${probe.reference}`
      : probe.kind === "blob"
      ? `blobs/${probe.digest}`
      : TAG_PROBE;
    const method = probe.kind === "tags" ? "GET" : "HEAD";
    let verdict = await this.#probe(upstream, repository, path, method, signal);
    if (verdict === "not_found" && probe.kind !== "tags") {
      verdict = await this.#probe(upstream, repository, TAG_PROBE, "GET", signal);
    }
    return verdict === "not_found" ? "denied" : verdict;
  }

  /**
   * One probe of `path` in `repository` (null: the registry's `/v2/` itself), and the one
   * re-send its 401 challenge calls for.
   */
  async #probe(
    upstream: UpstreamConfig,
    repository: string | null,
    path: string,
    method: "GET" | "HEAD",
    signal: AbortSignal | undefined,
  ): Promise<AccessVerdict | "not_found"> {
    const url = new URL(
      `${upstreamOrigin(upstream)}/v2/${repository === null ? "" : `${repository}/${path}`}`,
    );
    if (upstream.forwardNamespace) url.searchParams.set("ns", upstream.namespace);
    let authorization = this.#auth.wantsBasic(upstream.namespace)
      ? basicAuthorization(upstream.username!, upstream.password!)
      : undefined;
    let tokenAccepted = false;
    for (let attempt = 0;; attempt++) {
      const headers = new Headers({
        "user-agent": upstream.userAgent ?? DEFAULT_USER_AGENT,
        "accept-encoding": "identity",
        accept: path.startsWith("manifests/") ? ALL_MANIFEST_TYPES.join(", ") : "*/*",
      });
      if (authorization) headers.set("authorization", authorization);
      const { response, url: finalUrl } = await this.#transport.follow(
        upstream,
        url,
        method,
        headers,
        signal,
      );
      const status = response.status;
      if (status === 401 && attempt === 0 && finalUrl.host === url.host) {
        const challenges = parseWwwAuthenticate(response.headers.get("www-authenticate") ?? "");
        await discard(response);
        const bearer = challenges.find((c) => c.scheme === "bearer");
        if (bearer) {
          const token = await this.#auth.clientToken(upstream, repository, bearer, signal);
          if (token === "unauthorized" || token === "denied") return token;
          authorization = `Bearer ${token}`;
          tokenAccepted = true;
          continue;
        }
        if (challenges.some((c) => c.scheme === "basic")) {
          if (authorization?.startsWith("Basic ")) return "unauthorized";
          this.#auth.noteBasic(upstream.namespace);
          authorization = basicAuthorization(upstream.username!, upstream.password!);
          continue;
        }
        throw new RegistryError(
          "UPSTREAM_ERROR",
          `upstream ${upstream.host} answered 401 without a usable WWW-Authenticate challenge`,
        );
      }
      if (response.ok) {
        await discard(response);
        return "allowed";
      }
      const summary = await errorSummary(response, secretsOf(upstream));
      const fromUpstream = finalUrl.host === upstreamHost(upstream);
      // A token the token server issued, refused anyway: valid credentials without the scope.
      if (status === 401 && fromUpstream) return tokenAccepted ? "denied" : "unauthorized";
      if (status === 403 && fromUpstream) return "denied";
      if (status === 404) return "not_found";
      const where = describeHost(finalUrl, upstream);
      if (status === 429) throw tooManyRequests(where, response, summary);
      throw new RegistryError(
        status >= 500 ? "UNAVAILABLE" : "UPSTREAM_ERROR",
        `${where} answered ${status} to a pass-through check of ${
          repository ?? "a login"
        }${summary}`,
      );
    }
  }
}
