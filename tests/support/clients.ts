/**
 * Real clients for end-to-end tests, each fully private to the test (own root, state, socket,
 * config), so tests never touch the machine's own container storage:
 *
 * - `startContainerd()`: a private containerd daemon driven with `ctr`, pulling through a
 *   hosts dir (`hosts.toml`) that points a registry name at the mirror (containerd sends `?ns=`).
 * - `podmanClient()`: podman with its own root/runroot (vfs) and registries.conf
 *   (`[[registry.mirror]]`, the way cri-o and podman use a mirror).
 * - `registriesConf()`: renders a registries.conf (also for skopeo's `--registries-conf`).
 * - `containerdImages()`, `containerdContent()`, `assertContainerdComplete()` and
 *   `assertContainerdImage()`: what a pull left in containerd, read back with `ctr`.
 */
import { assert, assertEquals, assertMatch } from "./assert.ts";
import { blobsOf, type Image } from "./images.ts";
import {
  ChildProcess,
  GiveUp,
  run,
  type RunOptions,
  type RunResult,
  type TempDir,
  tempDir,
  waitFor,
} from "./tools.ts";

// ---------------------------------------------------------------------------------------------
// containerd

export interface ContainerdPullOptions {
  /**
   * `host:port` of the mirror to pull through (plain HTTP). Without it, the registry host in the
   * reference is contacted directly (over HTTP when `plainHttp`).
   */
  mirror?: string;
  /**
   * Use `[host."http://MIRROR/v2/<registry>"] override_path = true` (mirror path prefix and
   * `?ns=` both sent) instead of the plain host entry.
   */
  overridePath?: boolean;
  /** Raw hosts.toml for the reference's registry instead of the generated one. */
  hostsToml?: string;
  /** `--platform`, e.g. "linux/arm64". */
  platform?: string;
  /** `--all-platforms` */
  allPlatforms?: boolean;
  /** `--plain-http` for direct pulls without a mirror. */
  plainHttp?: boolean;
  /** `--user user:pass` */
  user?: string;
  timeoutMs?: number;
  /** Throw with ctr's output when the pull fails. Default true. */
  check?: boolean;
}

export interface Containerd extends AsyncDisposable {
  /** The daemon's gRPC socket (for `ctr --address`). */
  address: string;
  root: string;
  /** `ctr --address SOCK ARGS...` */
  ctr(args: string[], opts?: RunOptions): Promise<RunResult>;
  /** `ctr images pull --hosts-dir ... REF` with the hosts dir written from `opts`. */
  pull(ref: string, opts?: ContainerdPullOptions): Promise<RunResult>;
  /** Image names in the daemon. */
  images(): Promise<string[]>;
  /** Removes every image (content is garbage-collected by the daemon). */
  removeAllImages(): Promise<void>;
  /** The daemon's output. */
  logs(): string;
  /** SIGTERM the daemon and remove its directories. */
  close(): Promise<void>;
}

export async function startContainerd(): Promise<Containerd> {
  const dir = await tempDir("ctd-");
  const address = dir.join("c.sock");
  const config = [
    "version = 2",
    `root = ${JSON.stringify(dir.join("root"))}`,
    `state = ${JSON.stringify(dir.join("state"))}`,
    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
    "[grpc]",
    `  address = ${JSON.stringify(address)}`,
    "[ttrpc]",
    `  address = ${JSON.stringify(dir.join("c.sock.ttrpc"))}`,
    "[debug]",
    '  level = "info"',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${JSON.stringify(dir.join("opt"))}`,
    "",
  ].join("\n");
  await Deno.writeTextFile(dir.join("config.toml"), config);
  const daemon = new ChildProcess("containerd", ["--config", dir.join("config.toml")], {
    name: "containerd",
  });
  try {
    await waitFor(() => {
      if (daemon.exited) throw new GiveUp(`containerd exited with ${daemon.status?.code}`);
      return daemon.lines().some((l) => /containerd successfully booted/.test(l.line));
    }, { timeoutMs: 20_000, message: "containerd to boot" });
  } catch (e) {
    await daemon.kill();
    await dir.cleanup();
    throw new Error(`${(e as Error).message}\n--- containerd output\n${daemon.output()}`);
  }
  return new ContainerdImpl(dir, address, daemon);
}

class ContainerdImpl implements Containerd {
  readonly address: string;
  readonly root: string;
  readonly #dir: TempDir;
  readonly #daemon: ChildProcess;
  #pulls = 0;
  #closed = false;

  constructor(dir: TempDir, address: string, daemon: ChildProcess) {
    this.#dir = dir;
    this.address = address;
    this.root = dir.join("root");
    this.#daemon = daemon;
  }

  ctr(args: string[], opts: RunOptions = {}): Promise<RunResult> {
    return run("ctr", ["--address", this.address, ...args], { timeoutMs: 120_000, ...opts });
  }

  async pull(ref: string, opts: ContainerdPullOptions = {}): Promise<RunResult> {
    const registry = ref.split("/")[0];
    const hostsDir = this.#dir.join(`hosts-${++this.#pulls}`);
    let hostsToml = opts.hostsToml;
    if (hostsToml === undefined && opts.mirror) {
      hostsToml = opts.overridePath
        ? `[host."http://${opts.mirror}/v2/${registry}"]\n  capabilities = ["pull", "resolve"]\n  override_path = true\n`
        : `[host."http://${opts.mirror}"]\n  capabilities = ["pull", "resolve"]\n`;
    }
    if (hostsToml !== undefined) {
      await Deno.mkdir(`${hostsDir}/${registry}`, { recursive: true });
      await Deno.writeTextFile(`${hostsDir}/${registry}/hosts.toml`, hostsToml);
    }
    const args = ["images", "pull"];
    if (hostsToml !== undefined) args.push("--hosts-dir", hostsDir);
    if (opts.platform) args.push("--platform", opts.platform);
    if (opts.allPlatforms) args.push("--all-platforms");
    if (opts.plainHttp) args.push("--plain-http");
    if (opts.user) args.push("--user", opts.user);
    args.push(ref);
    return await this.ctr(args, {
      timeoutMs: opts.timeoutMs ?? 120_000,
      check: opts.check ?? true,
    });
  }

  async images(): Promise<string[]> {
    const result = await this.ctr(["images", "ls", "-q"], { check: true });
    return result.stdout.split("\n").map((l) => l.trim()).filter(Boolean);
  }

  async removeAllImages(): Promise<void> {
    const images = await this.images();
    if (images.length > 0) await this.ctr(["images", "rm", "--sync", ...images], { check: true });
  }

  logs(): string {
    return this.#daemon.output();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#daemon.stop("SIGTERM", 10_000);
    await this.#dir.cleanup();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** `ctr images ls` as ref -> digest. */
export async function containerdImages(containerd: Containerd): Promise<Map<string, string>> {
  const listed = await containerd.ctr(["images", "ls"], { check: true });
  const images = new Map<string, string>();
  for (const line of listed.stdout.split("\n").slice(1)) {
    const ref = line.split(/\s+/)[0];
    const digest = /sha256:[0-9a-f]{64}/.exec(line)?.[0];
    if (ref && digest) images.set(ref, digest);
  }
  return images;
}

/** `ctr content ls -q`: every digest in containerd's content store. */
export async function containerdContent(containerd: Containerd): Promise<Set<string>> {
  const listed = await containerd.ctr(["content", "ls", "-q"], { check: true });
  return new Set(listed.stdout.split("\n").map((l) => l.trim()).filter(Boolean));
}

/** `ctr images check` says the image is complete and unpacked. */
export async function assertContainerdComplete(containerd: Containerd, ref: string) {
  const checked = await containerd.ctr(["images", "check", `name==${ref}`], { check: true });
  const row = checked.stdout.split("\n").find((line) => line.startsWith(ref + " "));
  assert(row, `ctr images check lists ${ref}:\n${checked.stdout}`);
  assertMatch(row, /\scomplete \((\d+)\/\1\)\s/, `image complete:\n${checked.stdout}`);
  assertMatch(row, /\strue\s*$/, `image unpacked:\n${checked.stdout}`);
}

/**
 * containerd holds `ref` as `image` byte for byte: the image's digest, the manifest's bytes
 * (`ctr content get`), config and layers in the content store (which containerd only commits
 * under a digest it verified), complete and unpacked.
 */
export async function assertContainerdImage(containerd: Containerd, ref: string, image: Image) {
  assertEquals((await containerdImages(containerd)).get(ref), image.digest, `${ref}'s digest`);
  const manifest = await containerd.ctr(["content", "get", image.digest], { check: true });
  assertEquals(manifest.stdout, new TextDecoder().decode(image.manifest.bytes));
  const content = await containerdContent(containerd);
  for (const blob of blobsOf(image)) assert(content.has(blob.digest), `${blob.digest} stored`);
  await assertContainerdComplete(containerd, ref);
}

// ---------------------------------------------------------------------------------------------
// registries.conf, podman

export interface RegistryConfEntry {
  /** The name clients use (`registry.test`). */
  prefix: string;
  /** Where that name really is; default the prefix itself. */
  location?: string;
  insecure?: boolean;
  blocked?: boolean;
  /** Mirrors tried first, in order (`location` like `127.0.0.1:PORT/registry.test`). */
  mirrors?: { location: string; insecure?: boolean }[];
}

/** Renders registries.conf (v2 format) for podman, skopeo, buildah and cri-o. */
export function registriesConf(entries: RegistryConfEntry[]): string {
  const lines = ["unqualified-search-registries = []", ""];
  for (const entry of entries) {
    lines.push("[[registry]]");
    lines.push(`prefix = ${JSON.stringify(entry.prefix)}`);
    lines.push(`location = ${JSON.stringify(entry.location ?? entry.prefix)}`);
    if (entry.insecure) lines.push("insecure = true");
    if (entry.blocked) lines.push("blocked = true");
    for (const mirror of entry.mirrors ?? []) {
      lines.push("[[registry.mirror]]");
      lines.push(`location = ${JSON.stringify(mirror.location)}`);
      if (mirror.insecure ?? true) lines.push("insecure = true");
    }
    lines.push("");
  }
  return lines.join("\n");
}

export interface PodmanOptions {
  /** registries.conf entries (see `registriesConf`). */
  registries?: RegistryConfEntry[];
  /** Shorthand: every registry name here is mirrored through `mirror` with a path prefix. */
  mirror?: string;
  mirroredRegistries?: string[];
}

export interface Podman extends AsyncDisposable {
  root: string;
  runroot: string;
  /** The registries.conf file podman uses (CONTAINERS_REGISTRIES_CONF). */
  registriesConfFile: string;
  /** `podman --root R --runroot RR --storage-driver vfs ARGS...` with the registries.conf. */
  podman(args: string[], opts?: RunOptions): Promise<RunResult>;
  /** `podman pull [--tls-verify=false] REF`; throws with podman's output on failure by default. */
  pull(
    ref: string,
    opts?: { tlsVerify?: boolean; creds?: string; check?: boolean },
  ): Promise<RunResult>;
  /** `skopeo --registries-conf FILE ARGS...` with the same registries.conf. */
  skopeo(args: string[], opts?: RunOptions): Promise<RunResult>;
  close(): Promise<void>;
}

export async function podmanClient(opts: PodmanOptions = {}): Promise<Podman> {
  // podman's runroot path must stay under ~50 characters: keep the temp dir name short.
  const dir = await tempDir("pm-");
  const entries = [...(opts.registries ?? [])];
  for (const name of opts.mirroredRegistries ?? []) {
    if (!opts.mirror) throw new Error("podmanClient: mirroredRegistries needs mirror");
    entries.push({ prefix: name, mirrors: [{ location: `${opts.mirror}/${name}` }] });
  }
  const registriesConfFile = dir.join("registries.conf");
  await Deno.writeTextFile(registriesConfFile, registriesConf(entries));
  const root = dir.join("root");
  const runroot = dir.join("run");
  const env = { CONTAINERS_REGISTRIES_CONF: registriesConfFile };
  const podman = (args: string[], runOpts: RunOptions = {}) =>
    run("podman", ["--root", root, "--runroot", runroot, "--storage-driver", "vfs", ...args], {
      timeoutMs: 120_000,
      ...runOpts,
      env: { ...env, ...runOpts.env },
    });
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await dir.cleanup();
  };
  return {
    root,
    runroot,
    registriesConfFile,
    podman,
    pull: (ref, pullOpts = {}) => {
      const args = ["pull"];
      if (pullOpts.tlsVerify === false) args.push("--tls-verify=false");
      if (pullOpts.creds) args.push("--creds", pullOpts.creds);
      args.push(ref);
      return podman(args, { check: pullOpts.check ?? true });
    },
    skopeo: (args, runOpts = {}) =>
      run("skopeo", ["--registries-conf", registriesConfFile, ...args], {
        timeoutMs: 120_000,
        ...runOpts,
      }),
    close,
    [Symbol.asyncDispose]: close,
  };
}
