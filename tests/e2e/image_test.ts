/**
 * The scratch container image (Containerfile.scratch, staged by scripts/image.ts), built with a
 * real buildah and run with a real podman, both with private storage (vfs) in a temp dir:
 *
 * - its layers hold exactly the intended files (listed from the layer tars themselves): the Deno
 *   runtime, the bundle, the libraries `ldd` lists plus libcrypto, the loader, CA certificates,
 *   passwd/group, and an empty /data owned by 65532; every file's bytes equal its source;
 * - its config: non-root user, port 8080, /data volume, org.opencontainers.image.* labels
 *   (version and commit), and an entrypoint with exactly the start task's permissions and V8
 *   flags;
 * - it pushes itself into the running container's hosted repository (`--hosted self`), and
 *   podman pulls and runs it from there;
 * - run with `--read-only` and `--network host`, the serving process is uid 65532 with no
 *   capabilities, pulls an image from a real docker-registry byte-exact with skopeo (the
 *   container's own log shows the requests), trusts a CA bundle mounted at the image's CA path,
 *   and exits 0 on `podman stop`.
 */
import { assert, assertEquals, assertMatch } from "../support/assert.ts";
import {
  buildImage as buildTestImage,
  type Image,
  pushImage,
  skopeoPullDir,
} from "../support/images.ts";
import { startUpstream } from "../support/upstream.ts";
import {
  ChildProcess,
  freePort,
  GiveUp,
  REPO_ROOT,
  run,
  type RunOptions,
  sha256File,
  tempDir,
  waitFor,
} from "../support/tools.ts";
import { buildImage, bundle, NONROOT_UID, stageImage } from "../../scripts/image.ts";
import { VERSION } from "../../src/main.ts";
import { parseCommandLine } from "../../src/config/cli.ts";

const NS = "registry.test";
const TAG = "localhost/oci-registry-test:scratch";
/** runc refuses to start without these here (../shared/TOOLCHAIN.md). */
const ULIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"];

// deno-lint-ignore no-explicit-any
type Json = any;

/** `--allow-*` and `--v8-flags` of a command line, sorted. */
function permissions(args: string[]): string[] {
  return args.filter((a) => /^--(allow-[\w-]+|v8-flags)(=|$)/.test(a)).sort();
}

/** One entry of `tar -tv --numeric-owner`: `-rwxr-xr-x 0/0 1234 2024-01-01 00:00 deno`. */
interface TarEntry {
  mode: string;
  owner: string;
  size: number;
  path: string;
}

async function listTar(file: string): Promise<TarEntry[]> {
  const listed = await run("tar", ["-tvf", file, "--numeric-owner"], { check: true });
  return listed.stdout.split("\n").filter(Boolean).map((line) => {
    const [mode, owner, size, _date, _time, ...rest] = line.split(/\s+/);
    const path = "/" + rest.join(" ").replace(/^\.?\//, "").replace(/\/$/, "");
    return { mode, owner, size: Number(size), path };
  }).filter((e) => e.path !== "/");
}

Deno.test("image: the scratch image holds exactly what it should and serves pulls as non-root", async (t) => {
  await using dir = await tempDir("oci-image-");
  // podman needs a runroot path under 50 characters; temp dirs are short enough.
  const storage = ["--root", dir.join("r"), "--runroot", dir.join("rr"), "--storage-driver", "vfs"];
  const podman = (args: string[], opts: RunOptions = {}) =>
    run("podman", [...storage, ...args], { timeoutMs: 120_000, ...opts });

  const started = performance.now();
  await bundle(dir.join("oci-registry.js"));
  const staged = await stageImage(dir.join("context"), { bundle: dir.join("oci-registry.js") });
  const commit = await buildImage(staged, TAG, storage);
  console.log(`bundle + buildah bud: ${(performance.now() - started).toFixed(0)} ms`);

  // The image as an OCI layout: manifest, config and layer tars, as a registry would get them.
  await run("skopeo", [
    "copy",
    `containers-storage:[vfs@${dir.join("r")}+${dir.join("rr")}]${TAG}`,
    `oci:${dir.join("layout")}:x`,
  ], { check: true });
  const blob = (digest: string) => dir.join("layout", "blobs", ...digest.split(":"));
  const index = JSON.parse(await Deno.readTextFile(dir.join("layout", "index.json")));
  const manifest = JSON.parse(await Deno.readTextFile(blob(index.manifests[0].digest)));
  const config: Json = JSON.parse(await Deno.readTextFile(blob(manifest.config.digest)));

  await t.step("the layers hold exactly the intended files, byte for byte", async () => {
    const entries: TarEntry[] = [];
    for (const layer of manifest.layers) {
      assertMatch(layer.mediaType, /^application\/vnd\.oci\.image\.layer\.v1\.tar(\+gzip)?$/);
      entries.push(...await listTar(blob(layer.digest)));
    }
    const size = manifest.layers.reduce((sum: number, l: { size: number }) => sum + l.size, 0);
    const files = entries.reduce((sum, e) => sum + e.size, 0);
    console.log(
      `${manifest.layers.length} layer(s), ${entries.length} paths, ` +
        `${(files / 1e6).toFixed(1)} MB of files, ${(size / 1e6).toFixed(1)} MB compressed:`,
    );
    console.log(entries.map((e) => `${e.mode} ${e.owner} ${e.size} ${e.path}`).join("\n"));

    assertEquals(entries.map((e) => e.path).sort(), staged.paths, "nothing more, nothing less");
    // README.md states the sizes: within 10% of what was built here.
    const readme = await Deno.readTextFile(`${REPO_ROOT}/README.md`);
    const stated =
      /(\d+)\s+paths,\s+(\d+)\s+MB\s+uncompressed,\s+a\s+(\d+)\s+MB\s+compressed\s+layer/
        .exec(readme);
    assert(stated, "README.md states the image's size");
    assertEquals(Number(stated[1]), entries.length, "README's path count");
    for (const [said, measured] of [[stated[2], files], [stated[3], size]]) {
      assert(
        Math.abs(Number(said) * 1e6 - Number(measured)) < 0.1 * Number(measured),
        `README says ${said} MB, the image has ${(Number(measured) / 1e6).toFixed(1)} MB`,
      );
    }
    // The libraries: what ldd lists for the runtime (and the loader), plus libcrypto.
    assertEquals(
      staged.libraries.map((p) => p.split("/").pop()).sort(),
      [
        "ld-linux-x86-64.so.2",
        "libc.so.6",
        "libcrypto.so.3",
        "libdl.so.2",
        "libgcc_s.so.1",
        "libm.so.6",
        "libpthread.so.0",
        "librt.so.1",
      ],
    );
    for (const entry of entries) {
      if (entry.path === "/data") {
        assertEquals(`${entry.mode} ${entry.owner}`, `drwxr-xr-x ${NONROOT_UID}/${NONROOT_UID}`);
      } else {
        assertEquals(entry.owner, "0/0", `${entry.path} belongs to root`);
        assert(!entry.mode.slice(4).includes("w"), `${entry.path} is writable only by root`);
      }
    }
    // Every file's bytes are its source's.
    await Deno.mkdir(dir.join("unpacked"));
    for (const layer of manifest.layers) {
      await run("tar", ["-xf", blob(layer.digest), "-C", dir.join("unpacked")], { check: true });
    }
    for (const [inImage, onHost] of staged.sources) {
      assertEquals(
        await sha256File(dir.join("unpacked", inImage)),
        await sha256File(onHost),
        inImage,
      );
    }
    assertEquals(
      await Deno.readTextFile(dir.join("unpacked", "etc", "passwd")),
      `root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n`,
    );
    assertEquals([...Deno.readDirSync(dir.join("unpacked", "data"))], [], "/data is empty");
    await Deno.remove(dir.join("unpacked"), { recursive: true });
  });

  await t.step("config: non-root, labels, port, volume, the start task's flags", async () => {
    const c = config.config;
    assertEquals(c.User, `${NONROOT_UID}:${NONROOT_UID}`);
    assertEquals(Object.keys(c.ExposedPorts), ["8080/tcp"]);
    assertEquals(Object.keys(c.Volumes), ["/data"]);
    const labels = c.Labels;
    assertEquals(labels["org.opencontainers.image.title"], "oci-registry");
    assertEquals(labels["org.opencontainers.image.version"], VERSION);
    assertEquals(labels["org.opencontainers.image.revision"], commit);
    assertMatch(labels["org.opencontainers.image.revision"], /^[0-9a-f]{40}$/);
    const tasks = JSON.parse(await Deno.readTextFile(`${REPO_ROOT}/deno.json`)).tasks;
    assertEquals(permissions(c.Entrypoint), permissions(tasks.start.split(/\s+/)));
    // ... which are the compile task's, which the Dockerfile uses (tests/chart_test.ts).
    assertEquals(permissions(tasks.compile.split(/\s+/)), permissions(tasks.start.split(/\s+/)));
    assert(permissions(c.Entrypoint).length >= 7, "the start task's permissions were found");
    assertEquals(c.Entrypoint.slice(0, 2), ["/deno", "run"]);
    assertEquals(c.Entrypoint.at(-1), "/oci-registry.js");
    // The same default command as the distroless Dockerfile, and one the program accepts.
    const dockerfile = await Deno.readTextFile(`${REPO_ROOT}/Dockerfile`);
    assertEquals(c.Cmd, JSON.parse(/^CMD\s+(\[.*\])\s*$/m.exec(dockerfile)![1]));
    // The same labels as the distroless image (only the base differs).
    const dockerLabels = [...dockerfile.matchAll(/(org\.opencontainers\.image\.[\w.]+)=/g)]
      .map((m) => m[1]).sort();
    assertEquals(
      Object.keys(labels).filter((k) => k.startsWith("org.opencontainers.")).sort(),
      dockerLabels,
    );
    assertEquals(labels["org.opencontainers.image.base.name"], "scratch");
    assertEquals(c.Env.filter((e: string) => e.startsWith("DENO_TLS_CA_STORE=")), [
      "DENO_TLS_CA_STORE=system",
    ]);
    assertMatch(dockerfile, /^ENV DENO_TLS_CA_STORE=system$/m);
    const parsed = parseCommandLine(c.Cmd, () => undefined);
    assert(parsed.kind === "run");
    assertEquals(parsed.settings.storage, { kind: "filesystem", root: "/data" });
  });

  await using up = await startUpstream();
  await using tlsUp = await startUpstream({ tls: true });
  const image = await pushImage(up, "library/through-image", "1", buildTestImage({ layers: 3 }));
  const tlsImage = await pushImage(tlsUp, "library/over-tls", "1", buildTestImage());
  up.clearLog();
  await Deno.mkdir(dir.join("config"));
  await Deno.writeTextFile(
    dir.join("config", "upstreams.yaml"),
    `- namespace: ${NS}\n  host: ${up.host}\n  tls: false\n` +
      `- namespace: tls.${NS}\n  host: ${tlsUp.host}\n`,
  );

  /** `podman run` of the image in the foreground (its output captured); stopped by close(). */
  async function runImage(extra: string[] = []) {
    const port = freePort();
    const name = `oci-registry-test-${port}`;
    const child = new ChildProcess("podman", [
      ...storage,
      "run",
      "--rm",
      "--name",
      name,
      "--network",
      "host",
      "--read-only",
      ...ULIMITS,
      "-v",
      `${dir.join("config")}:/config:ro`,
      ...extra,
      TAG,
      "--listen",
      `127.0.0.1:${port}`,
      "--upstream-config-file",
      "/config/upstreams.yaml",
      // A hosted repository for the image itself (the step that pushes it there).
      "--hosted",
      "self",
      "--allow-anonymous-push",
      "filesystem",
      "--root",
      "/data",
    ], { name });
    // `podman stop` sends SIGTERM to the mirror (PID 1 in the container); `podman run` then
    // exits with the container's status and removes it (--rm). Signalling `podman run` itself
    // is only the fallback.
    const close = async () => {
      await podman(["stop", "--time", "10", name]);
      await waitFor(() => child.exited, { timeoutMs: 15_000 }).catch(() => {});
      return await child.stop("SIGTERM", 15_000);
    };
    try {
      await waitFor(async () => {
        if (child.exited) throw new GiveUp(`podman run exited ${child.status?.code}`);
        const response = await fetch(`http://127.0.0.1:${port}/`);
        await response.body?.cancel();
        return response.ok;
      }, { timeoutMs: 30_000, intervalMs: 100, message: "the container to serve" });
    } catch (e) {
      await close();
      throw new Error(`${(e as Error).message}\n${child.output()}`);
    }
    return { port, name, child, close, host: `127.0.0.1:${port}` };
  }

  const container = await runImage();
  let stopped: Deno.CommandStatus;
  try {
    await t.step("the serving process is uid 65532 with no capabilities", async () => {
      const pid = (await podman(["inspect", "--format", "{{.State.Pid}}", container.name], {
        check: true,
      })).stdout.trim();
      const status = await Deno.readTextFile(`/proc/${pid}/status`);
      const field = (name: string) => new RegExp(`^${name}:\\s+(.*)$`, "m").exec(status)![1];
      assertEquals(field("Uid").split(/\s+/), Array(4).fill(String(NONROOT_UID)));
      assertEquals(field("Gid").split(/\s+/), Array(4).fill(String(NONROOT_UID)));
      assertEquals(field("CapEff"), "0000000000000000");
      assertMatch(await Deno.readTextFile(`/proc/${pid}/cmdline`), /^\/deno\0run\0/);
    });

    await t.step(
      "pulls a real upstream's image byte-exact (skopeo through the container)",
      async () => {
        const pullStarted = performance.now();
        await using dest = await tempDir();
        await skopeoPullDir(
          { host: container.host },
          `${NS}/library/through-image`,
          "1",
          dest.path,
        );
        console.log(
          `skopeo pull through the container: ${(performance.now() - pullStarted).toFixed(0)} ms`,
        );
        assertPulled(dest.path, image);
        for (const b of [image.config, ...image.layers]) {
          assertEquals(await sha256File(dest.join(b.sha256)), b.sha256, b.digest);
          assertEquals(await up.countBlobGets(b.digest), 1);
        }
        // The container's own log shows what skopeo asked for.
        const logged = container.child.output();
        for (const b of [image.config, ...image.layers]) {
          assertMatch(
            logged,
            new RegExp(`^GET /v2/${NS}/library/through-image/blobs/${b.digest} 200 `, "m"),
          );
        }
        await up.sync();
        for (const r of up.requests()) assertMatch(r.userAgent, /^oci-registry\//);
      },
    );

    await t.step(
      "pushes itself into the running mirror's hosted repository, and runs from there",
      async () => {
        const ref = `${container.host}/self/oci-registry:${VERSION}`;
        await run("skopeo", [
          "copy",
          "--dest-tls-verify=false",
          `containers-storage:[vfs@${dir.join("r")}+${dir.join("rr")}]${TAG}`,
          `docker://${ref}`,
        ], { check: true, timeoutMs: 120_000 });
        // The mirror serves back exactly the manifest it was given.
        const served = await fetch(
          `http://${container.host}/v2/self/oci-registry/manifests/${VERSION}`,
          {
            headers: { accept: manifest.mediaType },
          },
        );
        const servedManifest = JSON.parse(await served.text());
        assertEquals(servedManifest.config.digest, manifest.config.digest);
        assertEquals(
          servedManifest.layers.map((l: { digest: string }) => l.digest),
          manifest.layers.map((l: { digest: string }) => l.digest),
        );
        // podman pulls the image from the mirror it is running in and runs it.
        await podman(["pull", "--tls-verify=false", ref], { check: true });
        const version = await podman([
          "run",
          "--rm",
          "--network",
          "host",
          ...ULIMITS,
          ref,
          "--version",
        ], {
          check: true,
        });
        assertMatch(version.stdout.trim(), /^oci-registry \d+\.\d+\.\d+/);
        await podman(["rmi", "--force", ref]);
      },
    );

    await t.step(
      "HTTPS upstream with a private CA: refused with the image's CA bundle",
      async () => {
        const response = await fetch(
          `http://${container.host}/v2/tls.${NS}/library/over-tls/manifests/1`,
        );
        await response.body?.cancel();
        assert(
          [502, 503].includes(response.status),
          `expected an upstream error: ${response.status}`,
        );
      },
    );
  } finally {
    stopped = await container.close();
  }
  assertEquals(stopped.code, 0, `podman stop: the mirror exits 0\n${container.child.output()}`);

  await t.step("a CA bundle mounted at /etc/ssl/certs/ca-certificates.crt is trusted", async () => {
    const withCa = await runImage(["-v", `${tlsUp.caFile}:/etc/ssl/certs/ca-certificates.crt:ro`]);
    let status: Deno.CommandStatus;
    try {
      await using dest = await tempDir();
      await skopeoPullDir({ host: withCa.host }, `tls.${NS}/library/over-tls`, "1", dest.path);
      assertPulled(dest.path, tlsImage);
    } finally {
      status = await withCa.close();
    }
    assertEquals(status.code, 0, withCa.child.output());
  });

  await podman(["rmi", "--force", TAG]);
});

function assertPulled(dir: string, image: Image) {
  assertEquals(Deno.readFileSync(`${dir}/manifest.json`), image.manifest.bytes);
}
