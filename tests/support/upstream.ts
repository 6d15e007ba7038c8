/**
 * A REAL upstream registry for end-to-end tests: Debian's `docker-registry` (CNCF distribution
 * 2.8.2) on 127.0.0.1 with filesystem storage in a temp dir, anonymous, with htpasswd Basic auth,
 * or with Bearer tokens from the fixture token server; optionally over HTTPS with a self-signed
 * certificate. Its access log is parsed so tests can count the requests it served.
 *
 *   await using up = await startUpstream({ auth: "token" });
 *   await pushImage(up, "library/x", "1", image);
 *   ... pull through the mirror ...
 *   assertEquals(await up.countBlobGets(image.layers[0].digest), 1);
 */
import { type TlsCert, tlsCert } from "./certs.ts";
import { RegistryClient } from "./registry_client.ts";
import {
  startTokenServer,
  type TokenServer,
  type TokenServerOptions,
  type TokenUser,
} from "./token_server.ts";
import {
  ChildProcess,
  freePort,
  GiveUp,
  isListening,
  run,
  type TempDir,
  tempDir,
  waitFor,
} from "./tools.ts";

export const REGISTRY_BINARY = "/usr/bin/docker-registry";

export type UpstreamAuth = "none" | "basic" | "token";

export interface UpstreamOptions {
  auth?: UpstreamAuth;
  /** Credentials for basic/token auth. Default "testuser" / "testpass". */
  username?: string;
  password?: string;
  /**
   * More accounts. Basic: each may read and write everything (distribution's htpasswd has no
   * per-repository rights). Token: each gets what its `repositories` allow.
   */
  users?: TokenUser[];
  /** Serve HTTPS with a self-signed certificate (valid for 127.0.0.1 and the *.test names). */
  tls?: boolean;
  /** Token mode: options for the token server (service, issuer, allowAnonymous, expiresIn). */
  token?: Omit<TokenServerOptions, "username" | "password">;
  /** distribution's log level for its own (non access log) lines. Default "warn". */
  logLevel?: "error" | "warn" | "info" | "debug";
  /** Extra top-level YAML appended to the generated config (e.g. `validation:` or `proxy:`). */
  extraYaml?: string;
  /** Echo the registry's output to stderr (also HARNESS_VERBOSE=1). */
  echo?: boolean;
}

/** One line of the access log. `path` includes the query string, if any. */
export interface AccessLogEntry {
  method: string;
  path: string;
  status: number;
  bytes: number;
  userAgent: string;
}

export interface Upstream extends AsyncDisposable {
  auth: UpstreamAuth;
  tls: boolean;
  port: number;
  /** `127.0.0.1:PORT` (what a mirror's upstream config calls `host`). */
  host: string;
  /** `http(s)://127.0.0.1:PORT` */
  url: string;
  username?: string;
  password?: string;
  /** `user:pass` for skopeo's `--creds`, or undefined for anonymous upstreams. */
  creds?: string;
  /** The temp dir holding config, data (`data/`) and certificates. */
  dir: string;
  /** The HTTPS listener's certificate and the CA that issued it (tls mode only). */
  cert?: TlsCert;
  /** PEM file of the issuing CA, for clients that want a CA file (tls mode only). */
  caFile?: string;
  /** The token server (token mode only). */
  tokenServer?: TokenServer;
  /** True while the registry process runs. */
  running(): boolean;
  /** Every access-log entry seen so far (call `sync()` first to include the latest requests). */
  requests(): AccessLogEntry[];
  /** Waits until every request answered before this call shows in `requests()`. */
  sync(): Promise<void>;
  /** sync(), then the number of entries matching the filter. */
  count(filter?: RequestFilter): Promise<number>;
  /** sync(), then the number of GETs of blob `digest` (any repository), 401s not counted. */
  countBlobGets(digest: string): Promise<number>;
  /** sync(), then the number of GETs of manifests (by tag or digest), 401s not counted. */
  countManifestGets(reference?: string): Promise<number>;
  /** sync(), then the number of HEADs of manifests, 401s not counted. */
  countManifestHeads(reference?: string): Promise<number>;
  /** Forgets the access log (and the token server's log). */
  clearLog(): void;
  /** The registry's raw output (all lines). */
  logs(): string;
  /** A client with this upstream's credentials (push, delete, inspect directly). */
  client(): RegistryClient;
  /** fetch() straight to the registry with no credentials (TLS client included). */
  fetch(path: string, init?: RequestInit): Promise<Response>;
  /** Stops the registry process; data, port and token server stay (see `start`). */
  stop(): Promise<void>;
  /** Starts the registry again on the same port with the same data. */
  start(): Promise<void>;
  /** stop() then start(). */
  restart(): Promise<void>;
  /** Stops everything and removes the temp dir. */
  close(): Promise<void>;
}

export interface RequestFilter {
  method?: string;
  /** A substring or pattern of the path (with query). */
  path?: string | RegExp;
  status?: number | ((status: number) => boolean);
}

const SYNC_PREFIX = "/v2/_harness_sync_";
// 127.0.0.1 - - [27/Nov/2026:22:22:08 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
const ACCESS_LINE =
  /^\S+ \S+ \S+ \[[^\]]+\] "([A-Z]+) (\S+) [^"]*" (\d{3}) (\d+|-) "(?:[^"\\]|\\.)*" "((?:[^"\\]|\\.)*)"/;

/**
 * The `storage:` and `http:` sections of a distribution config: filesystem storage in
 * `dataDir`, no upload purging (it would race the tests), listening on 127.0.0.1:`port`.
 * `http:` comes last, so callers may append its `tls:` block.
 */
export function registryStorageAndHttp(
  dataDir: string,
  port: number,
  opts: { allowDelete?: boolean } = {},
): string[] {
  return [
    "storage:",
    "  filesystem:",
    `    rootdirectory: ${JSON.stringify(dataDir)}`,
    ...(opts.allowDelete ? ["  delete:", "    enabled: true"] : []),
    "  maintenance:",
    "    uploadpurging:",
    "      enabled: false",
    "http:",
    `  addr: 127.0.0.1:${port}`,
    `  secret: ${JSON.stringify(crypto.randomUUID())}`,
  ];
}

export async function startUpstream(opts: UpstreamOptions = {}): Promise<Upstream> {
  const auth = opts.auth ?? "none";
  const tls = opts.tls ?? false;
  const username = auth === "none" ? undefined : opts.username ?? "testuser";
  const password = auth === "none" ? undefined : opts.password ?? "testpass";
  const dir = await tempDir("oci-upstream-");
  let tokenServer: TokenServer | undefined;
  let httpClient: Deno.HttpClient | undefined;
  try {
    const port = freePort();
    const scheme = tls ? "https" : "http";
    const url = `${scheme}://127.0.0.1:${port}`;
    await Deno.mkdir(dir.join("data"));

    const yaml: string[] = [
      "version: 0.1",
      "log:",
      `  level: ${opts.logLevel ?? "warn"}`,
      "  formatter: text",
      "  accesslog:",
      "    disabled: false",
      ...registryStorageAndHttp(dir.join("data"), port, { allowDelete: true }),
    ];
    let cert: TlsCert | undefined;
    let caFile: string | undefined;
    if (tls) {
      cert = await tlsCert();
      caFile = dir.join("tls-ca.pem");
      await Deno.writeTextFile(caFile, cert.caPem);
      await Deno.writeTextFile(dir.join("tls-cert.pem"), cert.certPem);
      await Deno.writeTextFile(dir.join("tls-key.pem"), cert.keyPem);
      yaml.push(
        "  tls:",
        `    certificate: ${JSON.stringify(dir.join("tls-cert.pem"))}`,
        `    key: ${JSON.stringify(dir.join("tls-key.pem"))}`,
      );
      httpClient = Deno.createHttpClient({ caCerts: [cert.caPem] });
    }
    if (auth === "basic") {
      const lines: string[] = [];
      for (const user of [{ username: username!, password: password! }, ...opts.users ?? []]) {
        const htpasswd = await run("htpasswd", ["-Bbn", user.username, user.password], {
          check: true,
          timeoutMs: 30_000,
        });
        lines.push(htpasswd.stdout.trim());
      }
      await Deno.writeTextFile(dir.join("htpasswd"), lines.join("\n") + "\n");
      yaml.push(
        "auth:",
        "  htpasswd:",
        "    realm: oci-registry-test",
        `    path: ${JSON.stringify(dir.join("htpasswd"))}`,
      );
    } else if (auth === "token") {
      tokenServer = await startTokenServer({
        ...opts.token,
        username,
        password,
        users: opts.users,
      });
      await Deno.writeTextFile(dir.join("token-cert.pem"), tokenServer.certPem);
      yaml.push(
        "auth:",
        "  token:",
        `    realm: ${JSON.stringify(tokenServer.realm)}`,
        `    service: ${JSON.stringify(tokenServer.service)}`,
        `    issuer: ${JSON.stringify(tokenServer.issuer)}`,
        `    rootcertbundle: ${JSON.stringify(dir.join("token-cert.pem"))}`,
      );
    }
    if (opts.extraYaml) yaml.push(opts.extraYaml);
    const configFile = dir.join("config.yml");
    await Deno.writeTextFile(configFile, yaml.join("\n") + "\n");

    return await UpstreamImpl.create({
      auth,
      tls,
      port,
      url,
      username,
      password,
      dir,
      cert,
      caFile,
      tokenServer,
      httpClient,
      configFile,
      echo: opts.echo,
    });
  } catch (e) {
    httpClient?.close();
    await tokenServer?.stop();
    await dir.cleanup();
    throw e;
  }
}

interface UpstreamInit {
  auth: UpstreamAuth;
  tls: boolean;
  port: number;
  url: string;
  username?: string;
  password?: string;
  dir: TempDir;
  cert?: TlsCert;
  caFile?: string;
  tokenServer?: TokenServer;
  httpClient?: Deno.HttpClient;
  configFile: string;
  echo?: boolean;
}

class UpstreamImpl implements Upstream {
  readonly auth: UpstreamAuth;
  readonly tls: boolean;
  readonly port: number;
  readonly host: string;
  readonly url: string;
  readonly username?: string;
  readonly password?: string;
  readonly creds?: string;
  readonly dir: string;
  readonly cert?: TlsCert;
  readonly caFile?: string;
  readonly tokenServer?: TokenServer;
  readonly #tempDir: TempDir;
  readonly #httpClient?: Deno.HttpClient;
  readonly #configFile: string;
  readonly #echo?: boolean;
  #process: ChildProcess | undefined;
  #entries: AccessLogEntry[] = [];
  #rawLines: string[] = [];
  #syncCounter = 0;
  #closed = false;

  private constructor(init: UpstreamInit) {
    this.auth = init.auth;
    this.tls = init.tls;
    this.port = init.port;
    this.host = `127.0.0.1:${init.port}`;
    this.url = init.url;
    this.username = init.username;
    this.password = init.password;
    this.creds = init.username !== undefined ? `${init.username}:${init.password}` : undefined;
    this.dir = init.dir.path;
    this.cert = init.cert;
    this.caFile = init.caFile;
    this.tokenServer = init.tokenServer;
    this.#tempDir = init.dir;
    this.#httpClient = init.httpClient;
    this.#configFile = init.configFile;
    this.#echo = init.echo;
  }

  static async create(init: UpstreamInit): Promise<UpstreamImpl> {
    const upstream = new UpstreamImpl(init);
    await upstream.start();
    return upstream;
  }

  running(): boolean {
    return this.#process !== undefined && !this.#process.exited;
  }

  async start(): Promise<void> {
    if (this.#closed) throw new Error("upstream: start() after close()");
    if (this.running()) return;
    const child = new ChildProcess(REGISTRY_BINARY, ["serve", this.#configFile], {
      name: `upstream:${this.port}`,
      echo: this.#echo,
    });
    this.#process = child;
    child.onLine(({ line }) => this.#onLine(line));
    for (const { line } of child.lines()) this.#onLine(line);
    try {
      await waitFor(async () => {
        if (child.exited) {
          throw new GiveUp(`docker-registry exited with ${child.status?.code}`);
        }
        return await isListening(this.port);
      }, { timeoutMs: 15_000, intervalMs: 25, message: `docker-registry on port ${this.port}` });
    } catch (e) {
      await child.kill();
      throw new Error(`${(e as Error).message}\n--- docker-registry output\n${child.output()}`);
    }
  }

  async stop(): Promise<void> {
    const child = this.#process;
    if (!child) return;
    await child.stop("SIGTERM", 5_000);
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.stop();
    await this.tokenServer?.stop();
    this.#httpClient?.close();
    await this.#tempDir.cleanup();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #onLine(line: string) {
    this.#rawLines.push(line);
    const match = ACCESS_LINE.exec(line);
    if (!match) return;
    this.#entries.push({
      method: match[1],
      path: match[2],
      status: Number(match[3]),
      bytes: match[4] === "-" ? 0 : Number(match[4]),
      userAgent: match[5],
    });
  }

  requests(): AccessLogEntry[] {
    return this.#entries.filter((e) => !e.path.startsWith(SYNC_PREFIX));
  }

  async sync(): Promise<void> {
    if (!this.running()) return;
    const marker = `${SYNC_PREFIX}${++this.#syncCounter}_/tags/list`;
    const response = await this.fetch(marker);
    await response.body?.cancel();
    await waitFor(() => this.#entries.some((e) => e.path === marker), {
      timeoutMs: 5_000,
      intervalMs: 5,
      message: "the upstream's access log to show the sync request",
    });
  }

  async count(filter: RequestFilter = {}): Promise<number> {
    await this.sync();
    return this.requests().filter((e) => matches(e, filter)).length;
  }

  countBlobGets(digest: string): Promise<number> {
    return this.count({
      method: "GET",
      path: new RegExp(`^/v2/.+/blobs/${escapeRegExp(digest)}(\\?|$)`),
      status: (s) => s !== 401,
    });
  }

  countManifestGets(reference?: string): Promise<number> {
    return this.count({
      method: "GET",
      path: manifestPath(reference),
      status: (s) => s !== 401,
    });
  }

  countManifestHeads(reference?: string): Promise<number> {
    return this.count({
      method: "HEAD",
      path: manifestPath(reference),
      status: (s) => s !== 401,
    });
  }

  clearLog(): void {
    this.#entries = [];
    this.tokenServer?.clearLog();
  }

  logs(): string {
    return this.#rawLines.join("\n");
  }

  client(): RegistryClient {
    return new RegistryClient({
      url: this.url,
      username: this.username,
      password: this.password,
      httpClient: this.#httpClient,
    });
  }

  fetch(path: string, init: RequestInit = {}): Promise<Response> {
    return fetch(new URL(path, this.url), { ...init, client: this.#httpClient });
  }
}

function matches(entry: AccessLogEntry, filter: RequestFilter): boolean {
  if (filter.method && entry.method !== filter.method.toUpperCase()) return false;
  if (filter.path !== undefined) {
    if (
      typeof filter.path === "string"
        ? !entry.path.includes(filter.path)
        : !filter.path.test(entry.path)
    ) {
      return false;
    }
  }
  if (filter.status !== undefined) {
    if (
      typeof filter.status === "number"
        ? entry.status !== filter.status
        : !filter.status(entry.status)
    ) {
      return false;
    }
  }
  return true;
}

function manifestPath(reference?: string): RegExp {
  return new RegExp(
    `^/v2/.+/manifests/${reference ? escapeRegExp(reference) : "[^/?]+"}(\\?|$)`,
  );
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
