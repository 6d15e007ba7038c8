/**
 * A REAL, private Docker daemon (Debian's docker.io, dockerd 20.10) for end-to-end tests, run the
 * way ../shared/TOOLCHAIN.md measured it: its own socket, data root, exec root and pid file, no
 * iptables, no bridge, vfs storage, and its own containerd (which dockerd starts under the exec
 * root, in its own namespaces). Nothing of the machine's own Docker is touched.
 *
 *   await using docker = await startDockerd({ registryMirror: mirror.url });
 *   await docker.cli(["pull", "hello:1"], { check: true });
 *
 * Docker Hub is unreachable by construction, not only because this machine has no network:
 * dockerd runs with HTTP(S)_PROXY pointing at a closed loopback port, so any request it would
 * send to registry-1.docker.io (its fallback when the mirror fails) fails at once with
 * "proxyconnect ... connection refused". Loopback (where the mirror listens) is never proxied.
 *
 * `assertDockerImage()` reads back what a pull left in the daemon (ID, layers, repo digest, bytes).
 *
 * `close()` stops dockerd (SIGTERM, then SIGKILL), then makes sure its containerd is gone too
 * and nothing is left mounted (a SIGKILLed dockerd would leave both behind), and removes every
 * directory.
 */
import { assertEquals } from "./assert.ts";
import type { Image } from "./images.ts";
import {
  ChildProcess,
  GiveUp,
  run,
  type RunOptions,
  type RunResult,
  sha256File,
  tempDir,
  waitFor,
} from "./tools.ts";

export const DOCKERD_BINARY = "/usr/sbin/dockerd";
export const DOCKER_BINARY = "/usr/bin/docker";

/** A port nothing listens on (discard): the proxy every non-loopback request is sent to. */
export const CLOSED_PROXY = "http://127.0.0.1:9";

export interface DockerdOptions {
  /** `--registry-mirror` URL, e.g. `http://127.0.0.1:PORT`. */
  registryMirror?: string;
  /** Echo the daemon's output to stderr (also HARNESS_VERBOSE=1). */
  echo?: boolean;
}

export interface Dockerd extends AsyncDisposable {
  /** `unix:///.../docker.sock` */
  host: string;
  /** `docker -H HOST ARGS...` (the CLI by full path). */
  cli(args: string[], opts?: RunOptions): Promise<RunResult>;
  /** `docker image inspect REF` parsed (the first object). */
  inspect(ref: string): Promise<DockerImage>;
  /** The daemon's output (its containerd's included). */
  logs(): string;
  close(): Promise<void>;
}

/** The fields of `docker image inspect` the tests read. */
export interface DockerImage {
  Id: string;
  RepoTags: string[];
  RepoDigests: string[];
  Architecture: string;
  Os: string;
  RootFS: { Type: string; Layers: string[] };
  Config: { Labels: Record<string, string> | null };
}

export async function startDockerd(opts: DockerdOptions = {}): Promise<Dockerd> {
  // Short names: the sockets dockerd and its containerd create under these must fit in 108 bytes.
  const dir = await tempDir("dk-");
  const host = `unix://${dir.join("docker.sock")}`;
  const args = [
    "--host",
    host,
    "--data-root",
    dir.join("root"),
    "--exec-root",
    dir.join("exec"),
    "--pidfile",
    dir.join("docker.pid"),
    "--iptables=false",
    "--ip-forward=false",
    "--bridge=none",
    "--storage-driver=vfs",
    "--containerd-namespace",
    "dk",
    "--containerd-plugins-namespace",
    "dkp",
  ];
  if (opts.registryMirror) args.push("--registry-mirror", opts.registryMirror);
  const daemon = new ChildProcess(DOCKERD_BINARY, args, {
    name: "dockerd",
    echo: opts.echo,
    env: {
      HTTP_PROXY: CLOSED_PROXY,
      HTTPS_PROXY: CLOSED_PROXY,
      http_proxy: CLOSED_PROXY,
      https_proxy: CLOSED_PROXY,
      NO_PROXY: "127.0.0.1,localhost",
      no_proxy: "127.0.0.1,localhost",
    },
  });
  const docker = new DockerdImpl(host, dir, daemon);
  try {
    await waitFor(async () => {
      if (daemon.exited) throw new GiveUp(`dockerd exited with ${daemon.status?.code}`);
      return (await docker.cli(["version", "--format", "{{.Server.Version}}"])).success;
    }, { timeoutMs: 30_000, intervalMs: 100, message: "dockerd to answer docker version" });
  } catch (e) {
    await docker.close();
    throw new Error(`${(e as Error).message}\n--- dockerd output\n${daemon.output()}`);
  }
  return docker;
}

class DockerdImpl implements Dockerd {
  readonly host: string;
  readonly #dir: Awaited<ReturnType<typeof tempDir>>;
  readonly #daemon: ChildProcess;
  #closed = false;

  constructor(host: string, dir: Awaited<ReturnType<typeof tempDir>>, daemon: ChildProcess) {
    this.host = host;
    this.#dir = dir;
    this.#daemon = daemon;
  }

  cli(args: string[], opts: RunOptions = {}): Promise<RunResult> {
    return run(DOCKER_BINARY, ["-H", this.host, ...args], { timeoutMs: 120_000, ...opts });
  }

  async inspect(ref: string): Promise<DockerImage> {
    const result = await this.cli(["image", "inspect", ref], { check: true });
    return JSON.parse(result.stdout)[0];
  }

  logs(): string {
    return this.#daemon.output();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const containerdPid = await readPid(this.#dir.join("exec", "containerd", "containerd.pid"));
    try {
      await this.#daemon.stop("SIGTERM", 15_000);
    } finally {
      // dockerd stops its containerd on a clean exit; after a SIGKILL it would not.
      if (containerdPid !== undefined && isOurs(containerdPid, this.#dir.path)) {
        try {
          Deno.kill(containerdPid, "SIGKILL");
        } catch { /* gone meanwhile */ }
        await waitFor(() => !isAlive(containerdPid), { timeoutMs: 10_000 }).catch(() => {});
      }
      // dockerd bind-mounts its data root onto itself and unmounts it on a clean exit only.
      for (const mountPoint of mountsUnder(this.#dir.path).reverse()) {
        await run("umount", ["--lazy", mountPoint]);
      }
      await this.#dir.cleanup();
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * dockerd holds `ref` as the pushed `image`: the image ID is the config's digest, the layer
 * diff IDs and the only repo digest (`repo@repoDigest`) are right, the platform is linux/amd64,
 * and the layers `docker save` writes are the image's, byte for byte.
 */
export async function assertDockerImage(
  docker: Dockerd,
  ref: string,
  repo: string,
  image: Image,
  repoDigest: string,
): Promise<void> {
  const inspected = await docker.inspect(ref);
  assertEquals(inspected.Id, image.config.digest, "image ID is the config's digest");
  assertEquals(inspected.RootFS.Layers, image.layers.map((l) => l.diffId));
  assertEquals(inspected.RepoDigests, [`${repo}@${repoDigest}`]);
  assertEquals(`${inspected.Os}/${inspected.Architecture}`, "linux/amd64");
  await using saved = await tempDir("dk-save-");
  await docker.cli(["save", "-o", saved.join("image.tar"), ref], { check: true });
  await run("tar", ["-xf", saved.join("image.tar"), "-C", saved.path], { check: true });
  const [entry] = JSON.parse(await Deno.readTextFile(saved.join("manifest.json")));
  const layers: string[] = entry.Layers;
  assertEquals(layers.length, image.layers.length);
  for (const [i, layer] of layers.entries()) {
    assertEquals(`sha256:${await sha256File(saved.join(layer))}`, image.layers[i].diffId);
  }
}

/** Mount points at or below `dir`, outermost first. */
function mountsUnder(dir: string): string[] {
  try {
    return Deno.readTextFileSync("/proc/self/mounts").split("\n")
      .map((line) => line.split(" ")[1]?.replace(/\\040/g, " "))
      .filter((point): point is string =>
        !!point && (point === dir || point.startsWith(`${dir}/`))
      );
  } catch {
    return [];
  }
}

async function readPid(file: string): Promise<number | undefined> {
  try {
    const pid = Number((await Deno.readTextFile(file)).trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** The process runs with `dir` on its command line (so a reused pid is never killed). */
function isOurs(pid: number, dir: string): boolean {
  try {
    return isAlive(pid) && Deno.readTextFileSync(`/proc/${pid}/cmdline`).includes(dir);
  } catch {
    return false;
  }
}

/** The process exists and is not a zombie. */
function isAlive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return !/^\d+ \(.*\) Z /.test(stat);
  } catch {
    return false;
  }
}
