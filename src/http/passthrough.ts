/**
 * Credential pass-through (`auth: passthrough` on an upstream): before anything of such a
 * namespace is served, cached or not, the client's own Basic credentials are checked against
 * the upstream for that repository (UpstreamClient.checkAccess), so the mirror never lets
 * anyone read more of a private registry than the registry itself would.
 *
 * - No credentials: 401 with a challenge (Basic, or the mirror's Bearer one with --auth-config).
 *   Credentials upstream rejects: 401. Valid ones without access (403, a token without the
 *   scope, 404 for the repository): 403 DENIED.
 * - Answers are remembered per (credentials, namespace, repository): a pass for the upstream's
 *   `passthrough_ttl` (60 s by default), a refusal for 5 s at most; concurrent checks for one
 *   key share one upstream request. Keys hold a SHA-256 of user and password under a random
 *   per-process salt, never the password.
 * - Credentials upstream refuses are failed logins of that client address and user name: after
 *   five, that pair is locked out with growing waits (login_limiter.ts), answered 429 with
 *   Retry-After without asking upstream, so the mirror is no password-guessing relay. Only
 *   that pair: others behind the same address (a NAT) and passes already remembered go on.
 * - Upstream unreachable (or failing, or rate limiting): fail closed with 503 UNAVAILABLE,
 *   except that a pass for the same credentials and repository no older than STALE_GRACE_MS
 *   is still honoured, as cached content is served stale while upstream is down. A refusal
 *   is never turned into a pass.
 * - With --auth-config, the mirror's token endpoint checks passthrough scopes the same way and
 *   records the verdict in the token (see `passthroughKey`); a request bearing such a token is
 *   admitted for the token's lifetime without asking upstream again.
 *
 * Nothing here logs or puts into an error a password, a token or a credential hash.
 */
import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { LruCache } from "../mirror/lru.ts";
import type { UpstreamRegistry } from "../config/upstreams.ts";
import type { LogFn } from "../runtime/log.ts";
import { isUnavailable, RegistryError } from "../oci/errors.ts";
import type {
  AccessProbe,
  AccessVerdict,
  ClientCredentials,
  UpstreamClient,
} from "../upstream/client.ts";
import { LoginLimiter } from "./login_limiter.ts";
import type { TokenClaims } from "./token.ts";

export type { AccessProbe, AccessVerdict, ClientCredentials };

export const DEFAULT_PASSTHROUGH_TTL_MS = 60_000;
/** Refusals are remembered this long at most, so a fixed password works again soon. */
export const NEGATIVE_TTL_MS = 5_000;
/** A pass this recent still admits while upstream cannot be asked. */
export const STALE_GRACE_MS = 5 * 60_000;
const MAX_ENTRIES = 10_000;
const MAX_BASIC_CHARS = 4096;

/** The challenge a client answers with Basic credentials (skopeo, podman, ctr, docker). */
export const BASIC_CHALLENGE = { "www-authenticate": 'Basic realm="oci-registry"' };

/** How a token records a passthrough verdict: a key no access rule ever grants. */
export function passthroughKey(namespace: string, repository: string): string {
  return `passthrough:${namespace}/${repository}`;
}

export interface PassthroughOptions {
  upstreams: UpstreamRegistry;
  checker: Pick<UpstreamClient, "checkAccess">;
  /** Clock (tests). */
  now?: () => number;
  /** The mirror's token check, with --auth-config (tokens carrying passthrough verdicts). */
  verifyToken?: (token: string) => TokenClaims | null;
  /** Each check's outcome (allowed, unauthorized, denied, stale, unavailable), for metrics. */
  onCheck?: (namespace: string, result: string) => void;
  log?: LogFn;
}

interface Entry {
  verdict: AccessVerdict;
  at: number;
}

export class PassthroughGate {
  readonly #upstreams: UpstreamRegistry;
  readonly #checker: Pick<UpstreamClient, "checkAccess">;
  readonly #now: () => number;
  readonly #verifyToken?: (token: string) => TokenClaims | null;
  readonly #onCheck: (namespace: string, result: string) => void;
  readonly #log: LogFn;
  readonly #salt = crypto.getRandomValues(new Uint8Array(32));
  readonly #entries = new LruCache<Entry>(MAX_ENTRIES);
  readonly #pending = new Map<string, Promise<AccessVerdict>>();
  readonly #refusals: LoginLimiter;

  constructor(options: PassthroughOptions) {
    this.#upstreams = options.upstreams;
    this.#checker = options.checker;
    this.#now = options.now ?? Date.now;
    this.#verifyToken = options.verifyToken;
    this.#onCheck = options.onCheck ?? (() => {});
    this.#log = options.log ?? (() => {});
    this.#refusals = new LoginLimiter(this.#now);
  }

  /** Whether requests for `namespace` pass through this gate. */
  covers(namespace: string): boolean {
    return this.#upstreams.get(namespace).auth === "passthrough";
  }

  /** Whether any configured namespace is gated (the ping then asks for credentials). */
  get active(): boolean {
    return this.#upstreams.configured().some((u) => u.auth === "passthrough");
  }

  /**
   * Admits the request from `address` or throws 401 (with `challenge`), 403, 429 or 503.
   * Returns the user name the client gave (for the access log and per-client limits), or ""
   * for a token's holder.
   */
  async admit(
    request: Request,
    address: string,
    namespace: string,
    repository: string,
    probe: AccessProbe,
    challenge: Record<string, string>,
  ): Promise<string> {
    const header = request.headers.get("authorization");
    const match = header === null ? null : /^([A-Za-z]+) +([^ ]+) *$/.exec(header);
    const scheme = match?.[1].toLowerCase();
    if (scheme === "bearer" && this.#verifyToken) {
      const claims = this.#verifyToken(match![2]);
      const granted = claims?.access[passthroughKey(namespace, repository)];
      if (granted?.includes("pull")) return claims!.sub;
      if (granted) throw denied(namespace, repository);
      throw new RegistryError("UNAUTHORIZED", "credentials for the upstream are required", {
        headers: challenge,
      });
    }
    const credentials = scheme === "basic" ? decodeBasic(match![2]) : null;
    if (!credentials) {
      throw new RegistryError(
        "UNAUTHORIZED",
        `${namespace} passes credentials through: log in with your credentials for it`,
        { headers: challenge },
      );
    }
    const verdict = await this.check(credentials, address, namespace, repository, probe);
    if (verdict === "allowed") return credentials.username;
    if (verdict === "unauthorized") {
      throw new RegistryError(
        "UNAUTHORIZED",
        `upstream ${namespace} did not accept these credentials`,
        { headers: challenge },
      );
    }
    throw denied(namespace, repository);
  }

  /**
   * What upstream says of `credentials` (sent from `address`) for the repository, remembered
   * as described above; throws UNAVAILABLE (or TOOMANYREQUESTS) when upstream cannot answer
   * and no recent pass is known, TOOMANYREQUESTS while these credentials' user is locked out
   * at `address`.
   */
  check(
    credentials: ClientCredentials,
    address: string,
    namespace: string,
    repository: string,
    probe: AccessProbe,
  ): Promise<AccessVerdict> {
    return this.#remembered(
      this.#key(credentials, namespace, repository),
      namespace,
      `${address}\n${credentials.username}`,
      () => this.#checker.checkAccess(namespace, repository, probe, credentials),
    );
  }

  /**
   * A login to the mirror (`docker login`, `podman login`) with credentials that are no mirror
   * user's: true when the passthrough upstream takes them (its own `GET /v2/`: valid
   * credentials, whatever they may read), false when it refuses them. A login names no
   * registry, so with several passthrough upstreams it is let through unchecked: one
   * registry's credentials are never sent to another, and the first pull checks them with the
   * one it is for. So is a login the upstream could not be asked about, with a warning.
   * Answers are remembered like repository checks.
   */
  async login(credentials: ClientCredentials, address: string): Promise<boolean> {
    const gated = this.#upstreams.configured().filter((u) => u.auth === "passthrough");
    if (gated.length !== 1) return true;
    const namespace = gated[0].namespace;
    const client = `${address}\n${credentials.username}`;
    let verdict: AccessVerdict;
    try {
      verdict = await this.#remembered(
        this.#key(credentials, namespace, ""),
        namespace,
        client,
        () => this.#checker.checkAccess(namespace, "", { kind: "login" }, credentials),
      );
    } catch (e) {
      if (!isUnavailable(e) || e instanceof LockedOut) throw e;
      this.#log(
        `login not checked: cannot ask passthrough upstream ${namespace}; ` +
          `accepted until the first pull asks again`,
        "warn",
      );
      return true;
    }
    return verdict !== "unauthorized";
  }

  /**
   * The verdict for `key`: remembered, or asked (once for concurrent callers) with `ask`
   * unless `client` (address and user name) is locked out for credentials upstream refused;
   * what upstream answers adds to its count of refusals, or clears it.
   */
  async #remembered(
    key: string,
    namespace: string,
    client: string,
    ask: () => Promise<AccessVerdict>,
  ): Promise<AccessVerdict> {
    const now = this.#now();
    const entry = this.#entries.get(key);
    if (entry && now - entry.at < this.#ttl(namespace, entry.verdict)) return entry.verdict;
    let pending = this.#pending.get(key);
    if (!pending) {
      this.#assertNotLocked(client, namespace);
      pending = ask()
        .then((verdict) => {
          this.#entries.set(key, { verdict, at: this.#now() });
          this.#onCheck(namespace, verdict);
          if (verdict === "unauthorized") this.#refusals.failed([client]);
          else this.#refusals.succeeded([client]);
          return verdict;
        })
        .finally(() => this.#pending.delete(key));
      this.#pending.set(key, pending);
    }
    try {
      return await pending;
    } catch (e) {
      if (!isUnavailable(e)) throw e;
      const known = this.#entries.get(key);
      if (known?.verdict === "allowed" && this.#now() - known.at < STALE_GRACE_MS) {
        this.#onCheck(namespace, "stale");
        return "allowed";
      }
      this.#onCheck(namespace, "unavailable");
      const error = e as RegistryError;
      throw new RegistryError(
        error.code === "TOOMANYREQUESTS" ? "TOOMANYREQUESTS" : "UNAVAILABLE",
        `cannot check the client's credentials with upstream ${namespace}: ${error.message}`,
        { headers: error.headers },
      );
    }
  }

  /** 429 while `client` is locked out for credentials upstream refused (nothing is asked). */
  #assertNotLocked(client: string, namespace: string): void {
    const retryAfter = this.#refusals.retryAfter([client]);
    if (retryAfter === 0) return;
    this.#onCheck(namespace, "locked");
    throw new LockedOut(
      `too many credentials refused by upstream ${namespace}; try again later`,
      retryAfter,
    );
  }

  #ttl(namespace: string, verdict: AccessVerdict): number {
    const ttl = this.#upstreams.get(namespace).passthroughTtlMs ?? DEFAULT_PASSTHROUGH_TTL_MS;
    return verdict === "allowed" ? ttl : Math.min(ttl, NEGATIVE_TTL_MS);
  }

  #key(credentials: ClientCredentials, namespace: string, repository: string): string {
    const hash = createHash("sha256")
      .update(this.#salt)
      .update(`${credentials.username}\0${credentials.password}`)
      .digest("base64");
    return `${hash}\n${namespace}\n${repository}`;
  }
}

/** 429 for a client locked out after refused credentials (not an unreachable upstream). */
class LockedOut extends RegistryError {
  constructor(message: string, retryAfter: number) {
    super("TOOMANYREQUESTS", message, { headers: { "retry-after": String(retryAfter) } });
  }
}

function denied(namespace: string, repository: string): RegistryError {
  return new RegistryError(
    "DENIED",
    `upstream ${namespace} does not let these credentials pull ${repository}`,
  );
}

/** `user:password` from a Basic payload, or null when it is not one. */
export function decodeBasic(payload: string): ClientCredentials | null {
  if (payload.length > MAX_BASIC_CHARS || !/^[A-Za-z0-9+/]+={0,2}$/.test(payload)) return null;
  const text = Buffer.from(payload, "base64").toString("utf8");
  const colon = text.indexOf(":");
  if (colon <= 0) return null;
  return { username: text.slice(0, colon), password: text.slice(colon + 1) };
}
