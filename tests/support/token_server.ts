/**
 * A small Docker-style token server (the `auth.docker.io/token` role) for Bearer-token upstream
 * registries. Runs inside the test process with Deno.serve.
 *
 * GET  /token?service=S&scope=repository:NAME:pull,push[&scope=...]   (Basic credentials optional)
 * POST /token  (OAuth2 form: grant_type=password, username, password, service, scope)
 *
 * answers `{token, access_token, expires_in, issued_at}` where the token is an RS256 JWT whose
 * header carries the signing certificate (`x5c`), which distribution verifies against its
 * `rootcertbundle`. Every request is recorded so tests can count token fetches.
 */
import { createSign, randomUUID } from "node:crypto";
import { type SelfSignedCert, signingCert } from "./certs.ts";

export interface TokenServerOptions {
  /** The `service` the registry expects (JWT `aud`). Default "oci-registry-test". */
  service?: string;
  /** The JWT `iss`. Default "oci-registry-test-issuer". */
  issuer?: string;
  /** When set, Basic credentials must match (wrong ones always get 401). */
  username?: string;
  password?: string;
  /**
   * Whether a request without credentials gets a token. Default: true when no username is
   * configured (everyone gets every action asked for), false otherwise. When a username is
   * configured and this is true, anonymous callers get `pull` only.
   */
  allowAnonymous?: boolean;
  /** Token lifetime in seconds (`expires_in`). Default 300. */
  expiresIn?: number;
  /** More accounts besides `username`, each limited to `repositories` when given. */
  users?: TokenUser[];
}

/** An account of the token server; `repositories` are name prefixes (default: everything). */
export interface TokenUser {
  username: string;
  password: string;
  repositories?: string[];
}

/** One request the token server answered. */
export interface TokenRequest {
  method: string;
  service: string | null;
  scopes: string[];
  /** The authenticated account, or "" for anonymous. */
  account: string;
  status: number;
  /** The `access` claim granted (empty when refused). */
  granted: { type: string; name: string; actions: string[] }[];
}

export interface TokenServer extends AsyncDisposable {
  port: number;
  /** `http://127.0.0.1:PORT/token`, the registry's `realm`. */
  realm: string;
  service: string;
  issuer: string;
  /** PEM of the certificate whose key signs the tokens (the registry's `rootcertbundle`). */
  certPem: string;
  /** Every request answered so far (including refused ones). */
  requests(): TokenRequest[];
  /** Number of tokens issued (status 200). */
  tokenCount(): number;
  clearLog(): void;
  /**
   * Makes the next `count` requests fail with `status` (e.g. 503) without issuing a token;
   * `count` Infinity until `failRequests(0)`.
   */
  failRequests(count: number, status?: number): void;
  stop(): Promise<void>;
}

export async function startTokenServer(opts: TokenServerOptions = {}): Promise<TokenServer> {
  const service = opts.service ?? "oci-registry-test";
  const issuer = opts.issuer ?? "oci-registry-test-issuer";
  const expiresIn = opts.expiresIn ?? 300;
  const allowAnonymous = opts.allowAnonymous ?? opts.username === undefined;
  const cert = await signingCert();
  const log: TokenRequest[] = [];
  let failures = { count: 0, status: 503 };

  const handler = async (request: Request): Promise<Response> => {
    const url = new URL(request.url);
    const entry: TokenRequest = {
      method: request.method,
      service: url.searchParams.get("service"),
      scopes: url.searchParams.getAll("scope"),
      account: "",
      status: 200,
      granted: [],
    };
    log.push(entry);
    const answer = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      entry.status = status;
      return Response.json(body, { status, headers });
    };
    if (url.pathname !== "/token") return answer(404, { errors: [{ code: "NOT_FOUND" }] });
    if (failures.count > 0) {
      failures.count--;
      return answer(failures.status, {
        errors: [{ code: "UNAVAILABLE", message: "told to fail" }],
      });
    }

    let username: string | undefined;
    let password: string | undefined;
    if (request.method === "POST") {
      const form = new URLSearchParams(await request.text());
      entry.service = form.get("service");
      entry.scopes = (form.get("scope") ?? "").split(" ").filter(Boolean);
      if (form.get("grant_type") === "password") {
        username = form.get("username") ?? undefined;
        password = form.get("password") ?? undefined;
      } else {
        // refresh_token grants are not issued by this server
        return answer(400, { error: "unsupported_grant_type" });
      }
    } else if (request.method === "GET") {
      const basic = parseBasic(request.headers.get("authorization"));
      username = basic?.username;
      password = basic?.password;
    } else {
      return answer(405, { errors: [{ code: "UNSUPPORTED" }] });
    }

    const challenge = { "WWW-Authenticate": `Basic realm="${service}"` };
    let pullOnly = false;
    const accounts: TokenUser[] = [
      ...(opts.username === undefined
        ? []
        : [{ username: opts.username, password: opts.password ?? "" }]),
      ...(opts.users ?? []),
    ];
    const account = accounts.find((a) => a.username === username && a.password === password);
    if (username !== undefined) {
      if (accounts.length > 0 && !account) {
        return answer(401, { errors: [{ code: "UNAUTHORIZED", message: "bad credentials" }] }, {
          ...challenge,
        });
      }
      entry.account = username;
    } else if (!allowAnonymous) {
      return answer(401, { errors: [{ code: "UNAUTHORIZED", message: "credentials needed" }] }, {
        ...challenge,
      });
    } else if (opts.username !== undefined) {
      pullOnly = true;
    }

    entry.granted = entry.scopes.flatMap((scope) => {
      const parsed = parseScope(scope);
      if (!parsed) return [];
      const actions = pullOnly ? parsed.actions.filter((a) => a === "pull") : parsed.actions;
      const limits = account?.repositories;
      if (limits && !limits.some((prefix) => parsed.name.startsWith(prefix))) {
        return [{ ...parsed, actions: [] }];
      }
      return [{ ...parsed, actions }];
    });
    const issuedAt = new Date();
    const now = Math.floor(issuedAt.getTime() / 1000);
    const token = signJwt(cert, {
      iss: issuer,
      sub: entry.account,
      aud: service,
      exp: now + expiresIn,
      nbf: now - 10,
      iat: now,
      jti: randomUUID(),
      access: entry.granted,
    });
    return answer(200, {
      token,
      access_token: token,
      expires_in: expiresIn,
      issued_at: issuedAt.toISOString(),
    });
  };

  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: () => {},
  }, handler);
  const port = server.addr.port;
  let stopped: Promise<void> | undefined;
  const stop = () => {
    stopped ??= server.shutdown();
    return stopped;
  };
  return {
    port,
    realm: `http://127.0.0.1:${port}/token`,
    service,
    issuer,
    certPem: cert.certPem,
    requests: () => log.map((e) => ({ ...e })),
    tokenCount: () => log.filter((e) => e.status === 200).length,
    clearLog: () => {
      log.length = 0;
    },
    failRequests: (count, status = 503) => {
      failures = { count, status };
    },
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

/** `repository:library/alpine:pull,push` -> {type, name, actions}; names may contain ':'. */
export function parseScope(
  scope: string,
): { type: string; name: string; actions: string[] } | undefined {
  const first = scope.indexOf(":");
  const last = scope.lastIndexOf(":");
  if (first <= 0 || last === first) return undefined;
  return {
    type: scope.slice(0, first),
    name: scope.slice(first + 1, last),
    actions: scope.slice(last + 1).split(",").filter(Boolean),
  };
}

function parseBasic(header: string | null): { username: string; password: string } | undefined {
  const match = /^Basic\s+(\S+)$/i.exec(header ?? "");
  if (!match) return undefined;
  const decoded = new TextDecoder().decode(Uint8Array.from(atob(match[1]), (c) => c.charCodeAt(0)));
  const colon = decoded.indexOf(":");
  if (colon < 0) return undefined;
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

function base64url(data: string | Uint8Array): string {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function signJwt(cert: SelfSignedCert, claims: Record<string, unknown>): string {
  const header = { typ: "JWT", alg: "RS256", x5c: [cert.certDerBase64] };
  const signingInput = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`;
  const signature = createSign("RSA-SHA256").update(signingInput).sign(cert.keyPem);
  return `${signingInput}.${base64url(new Uint8Array(signature))}`;
}
