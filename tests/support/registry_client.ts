/**
 * A minimal OCI Distribution client for test fixtures: answers Basic and Bearer challenges
 * (fetching tokens from the realm), caches tokens per repository, follows nothing else. Used to
 * push test images to the upstream and to poke at registries directly from tests.
 */

export interface RegistryTarget {
  /** Base URL without path, e.g. `http://127.0.0.1:5000`. */
  url: string;
  username?: string;
  password?: string;
  /** For HTTPS registries with a self-signed certificate. Not closed by the client. */
  httpClient?: Deno.HttpClient;
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parses `Bearer realm="...",service="...",scope="..."` (one challenge). */
export function parseChallenge(header: string | null): Challenge | undefined {
  if (!header) return undefined;
  const match = /^\s*(\S+)\s*(.*)$/.exec(header);
  if (!match) return undefined;
  const params: Record<string, string> = {};
  const re = /([A-Za-z0-9_-]+)=(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g;
  for (const m of match[2].matchAll(re)) {
    params[m[1].toLowerCase()] = m[2] !== undefined ? m[2].replace(/\\(.)/g, "$1") : m[3];
  }
  return { scheme: match[1].toLowerCase(), params };
}

/** The repository a `/v2/<name>/(blobs|manifests|tags)/...` path is about, if any. */
export function repositoryOf(path: string): string | undefined {
  const match = /^\/v2\/(.+?)\/(blobs|manifests|tags|referrers)(\/|$)/.exec(
    new URL(path, "http://x").pathname,
  );
  return match?.[1];
}

export function basicAuth(username: string, password: string): string {
  const bytes = new TextEncoder().encode(`${username}:${password}`);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return `Basic ${btoa(binary)}`;
}

export class RegistryClient {
  readonly target: RegistryTarget;
  readonly #tokens = new Map<string, string>();
  /** Number of tokens this client fetched (handy to assert the fixture's auth really ran). */
  tokenFetches = 0;

  constructor(target: RegistryTarget) {
    this.target = target;
  }

  /**
   * fetch() against the registry. `path` may be a path (`/v2/...`) or an absolute URL on the
   * registry (such as an upload Location). A 401 is answered once with credentials or a token;
   * bodies that are streams cannot be replayed, so make sure a token is cached first (any
   * earlier request to the same repository with the same methods does that).
   */
  async fetch(path: string, init: RequestInit = {}): Promise<Response> {
    const url = new URL(path, this.target.url);
    const method = (init.method ?? "GET").toUpperCase();
    const repo = repositoryOf(url.pathname + url.search);
    const wantsPush = !["GET", "HEAD"].includes(method);
    const key = repo ? `repository:${repo}:${wantsPush ? "pull,push" : "pull"}` : "registry";
    const send = (authorization?: string) => {
      const headers = new Headers(init.headers);
      if (authorization) headers.set("authorization", authorization);
      return fetch(url, { ...init, headers, client: this.target.httpClient, redirect: "manual" });
    };
    let authorization = this.#tokens.get(key) ??
      this.#tokens.get(repo ? `repository:${repo}:pull,push` : "registry") ??
      (this.target.username !== undefined
        ? basicAuth(this.target.username, this.target.password ?? "")
        : undefined);
    const response = await send(authorization);
    if (response.status !== 401) return response;
    if (init.body instanceof ReadableStream) return response;
    const challenge = parseChallenge(response.headers.get("www-authenticate"));
    if (!challenge) return response;
    if (challenge.scheme === "basic") {
      if (this.target.username === undefined) return response;
      authorization = basicAuth(this.target.username, this.target.password ?? "");
    } else if (challenge.scheme === "bearer") {
      const scope = challenge.params.scope ?? (repo ? key : undefined);
      const token = await this.#fetchToken(challenge.params.realm, challenge.params.service, scope);
      if (!token) return response;
      authorization = `Bearer ${token}`;
      this.#tokens.set(key, authorization);
    } else {
      return response;
    }
    await response.body?.cancel();
    return await send(authorization);
  }

  async #fetchToken(realm: string, service?: string, scope?: string): Promise<string | undefined> {
    const url = new URL(realm);
    if (service) url.searchParams.set("service", service);
    if (scope) url.searchParams.set("scope", scope);
    const headers = new Headers();
    if (this.target.username !== undefined) {
      headers.set("authorization", basicAuth(this.target.username, this.target.password ?? ""));
    }
    this.tokenFetches++;
    const response = await fetch(url, { headers, client: this.target.httpClient });
    if (!response.ok) {
      await response.body?.cancel();
      return undefined;
    }
    const body = await response.json();
    return body.token ?? body.access_token;
  }

  /** fetch() that throws unless the status is one of `expected`; returns the response. */
  async expect(path: string, init: RequestInit, ...expected: number[]): Promise<Response> {
    const response = await this.fetch(path, init);
    if (!expected.includes(response.status)) {
      const text = await response.text().catch(() => "");
      throw new Error(
        `${init.method ?? "GET"} ${path}: expected ${
          expected.join("/")
        }, got ${response.status}: ${text}`,
      );
    }
    return response;
  }
}
