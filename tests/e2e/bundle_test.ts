/**
 * The shipped program, not the source tree: `deno bundle` turns src/main.ts (and the storage
 * back-ends it loads with a dynamic import) into one JavaScript file, which is then run as
 *
 *   DENO run -A --no-config --cached-only BUNDLE ...
 *
 * with an EMPTY DENO_DIR, so it cannot lean on deno.json, the import map or cached npm packages:
 * whatever it needs must be inside the file. (`deno compile` builds the real executable but
 * needs a download this machine cannot make; the bundle is the closest artefact we can run.)
 */
import { assert, assertEquals, assertMatch } from "../support/assert.ts";
import { buildImage, type Image, pushImage, skopeoPullDir } from "../support/images.ts";
import { startMirror } from "../support/mirror.ts";
import { s3MirrorArgs, startS3rver } from "../support/s3rver.ts";
import { startUpstream } from "../support/upstream.ts";
import { freePort, REPO_ROOT, run, sha256File, type TempDir, tempDir } from "../support/tools.ts";

const NS = "registry.test";

interface Bundle {
  file: string;
  /** The command line that runs it, for startMirror({ command }) and run(). */
  command: string[];
  /** Environment that hides every cache: an empty DENO_DIR. */
  env: Record<string, string>;
}

async function buildBundle(dir: TempDir): Promise<Bundle> {
  const file = dir.join("oci-registry.js");
  const built = await run(
    Deno.execPath(),
    ["bundle", "--platform", "deno", "-o", file, "src/main.ts"],
    { cwd: REPO_ROOT, env: { NO_COLOR: "1" }, timeoutMs: 300_000 },
  );
  assert(
    built.success,
    `deno bundle failed (${built.code})\n--- stdout\n${built.stdout}\n--- stderr\n${built.stderr}`,
  );
  await Deno.mkdir(dir.join("deno-dir"));
  return {
    file,
    command: [Deno.execPath(), "run", "-A", "--no-config", "--cached-only", file],
    env: { DENO_DIR: dir.join("deno-dir"), NO_COLOR: "1" },
  };
}

async function runBundle(bundle: Bundle, args: string[]) {
  const [cmd, ...rest] = bundle.command;
  return await run(cmd, [...rest, ...args], { env: bundle.env, cwd: REPO_ROOT, timeoutMs: 60_000 });
}

/** skopeo pulls `registry.test/REPO:1` through the mirror; every file must match `image`. */
async function pullAndCompare(mirrorHost: string, repo: string, image: Image) {
  await using dest = await tempDir();
  await skopeoPullDir({ host: mirrorHost }, `${NS}/${repo}`, "1", dest.join("image"));
  for (const blob of [image.config, ...image.layers]) {
    assertEquals(await sha256File(dest.join("image", blob.sha256)), blob.sha256);
  }
  assertEquals(await Deno.readFile(dest.join("image", "manifest.json")), image.manifest.bytes);
}

/** Lines a person would read (Deno prints nothing else on a clean exit). */
function lines(text: string): string[] {
  return text.split("\n").filter((line) => line.trim() !== "");
}

Deno.test("the bundled program runs on its own and pulls byte-exact images", async (t) => {
  await using dir = await tempDir("oci-bundle-");
  const bundle = await buildBundle(dir);

  await t.step("is self-contained: only node: built-ins are left to import", async () => {
    const source = await Deno.readTextFile(bundle.file);
    const specifiers = new Set<string>();
    for (const match of source.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*)["']([^"']+)["']/g)) {
      specifiers.add(match[1]);
    }
    const foreign = [...specifiers].filter((s) => !s.startsWith("node:"));
    assertEquals(foreign, [], `imports the bundle still needs from outside: ${foreign.join(", ")}`);
    // Both storage back-ends are reached through `await import(...)` in src/commands/storage.ts;
    // the bundler must have inlined them (it marks each inlined module with a path comment).
    for (const module of ["src/storage/filesystem.ts", "src/storage/s3.ts"]) {
      assert(source.includes(`// ${module}\n`), `${module} is not inside the bundle`);
    }
  });

  await t.step("--help exits 0 and prints the usage", async () => {
    const help = await runBundle(bundle, ["--help"]);
    assertEquals(help.code, 0, `--help exited ${help.code}\n${help.stderr}`);
    assertMatch(help.stdout, /^usage: oci-registry \[global flags\] filesystem --root DIR$/m);
    assertMatch(help.stdout, /^\s+--upstream-config-file VALUE\b/m);
    assertMatch(help.stdout, /^\s+--s3-redirect\b/m);
    assertEquals(help.stderr, "");
  });

  await t.step("--version prints the version", async () => {
    const version = await runBundle(bundle, ["--version"]);
    assertEquals(version.code, 0);
    assertMatch(
      version.stdout.trim(),
      /^oci-registry \d+\.\d+\.\d+\S* \((commit [0-9a-f]{7,40}|development build)\)$/,
    );
  });

  const badCommandLines: [string[], RegExp][] = [
    [["--no-such-flag", "filesystem", "--root", dir.join("x")], /unknown flag --no-such-flag/],
    [["filesystem"], /--root/],
    [["--listen", "nowhere", "filesystem", "--root", dir.join("x")], /--listen/],
    [["s3", "--bucket", "b", "--access-key", "k"], /--secret-key/],
    [[], /subcommand/],
  ];
  for (const [args, mentions] of badCommandLines) {
    await t.step(`bad command line [${args.join(" ")}]: one clear line, no stack`, async () => {
      const result = await runBundle(bundle, args);
      assert(result.code !== 0, `exited 0 for ${args.join(" ")}`);
      const said = lines(result.stdout + result.stderr);
      assertEquals(said.length, 1, `expected one line, got:\n${said.join("\n")}`);
      assertMatch(said[0], /^oci-registry: /);
      assertMatch(said[0], mentions);
      assert(!/\bat .*:\d+:\d+|Uncaught|error: /i.test(said[0]), `looks like a crash: ${said[0]}`);
    });
  }

  await t.step("a malformed upstream file: one clear line naming the file", async () => {
    const config = dir.join("bad-upstreams.yaml");
    await Deno.writeTextFile(config, "- namespace: registry.test\n  hots: 127.0.0.1:1\n");
    const result = await runBundle(bundle, [
      "--upstream-config-file",
      config,
      "filesystem",
      "--root",
      dir.join("x"),
    ]);
    assert(result.code !== 0, "exited 0 with a malformed upstream file");
    const said = lines(result.stdout + result.stderr);
    assertEquals(said.length, 1, `expected one line, got:\n${said.join("\n")}`);
    assertMatch(said[0], /bad-upstreams\.yaml/);
    assertMatch(said[0], /hots/);
  });

  await t.step("pulls through a real upstream with skopeo: every blob byte-exact", async () => {
    await using up = await startUpstream({ auth: "basic" });
    const oci = await pushImage(up, "library/oci", "1", buildImage({ format: "oci", layers: 3 }));
    const docker = await pushImage(up, "library/docker", "1", buildImage({ format: "docker" }));
    // Credentials come from the environment, the way the Helm chart passes them.
    await using authed = await startMirror({
      command: bundle.command,
      env: {
        ...bundle.env,
        UPSTREAM_CREDENTIALS: JSON.stringify({
          [NS]: { username: up.username!, password: up.password! },
        }),
      },
      upstreams: [{ namespace: NS, host: up.host, tls: false }],
    });
    assertMatch(authed.logs(), /storage: filesystem/);
    up.clearLog();
    for (const [repo, image] of [["library/oci", oci], ["library/docker", docker]] as const) {
      await pullAndCompare(authed.host, repo, image);
      for (const blob of [image.config, ...image.layers]) {
        assertEquals(await up.countBlobGets(blob.digest), 1, `one upstream GET of ${blob.digest}`);
      }
    }

    // The cache holds the blobs: a direct GET matches byte for byte with the upstream stopped.
    await up.stop();
    for (const layer of oci.layers) {
      const response = await authed.fetch(`/v2/library/oci/blobs/${layer.digest}?ns=${NS}`);
      assertEquals(response.status, 200);
      assertEquals(response.headers.get("docker-content-digest"), layer.digest);
      assertEquals(new Uint8Array(await response.arrayBuffer()), layer.bytes);
    }
  });

  await t.step("S3 storage (the other dynamic import): a pull is byte-exact", async () => {
    const s3 = await startS3rver("bundle-bucket");
    try {
      await using up = await startUpstream();
      const image = await pushImage(up, "library/s3", "1", buildImage({ format: "oci" }));
      await using mirror = await startMirror({
        command: bundle.command,
        env: bundle.env,
        upstreams: [{ namespace: NS, host: up.host, tls: false }],
        storageArgs: s3MirrorArgs(s3, "--prefix", "bundle/"),
      });
      assertMatch(mirror.logs(), /storage: s3\b/);
      await pullAndCompare(mirror.host, "library/s3", image);
      // Served from the bucket once the upstream is gone.
      await up.stop();
      await pullAndCompare(mirror.host, "library/s3", image);
    } finally {
      await s3.stop();
    }
  });

  await t.step("S3 storage that cannot be reached: exits non-zero, naming the bucket", async () => {
    const result = await runBundle(bundle, [
      "--listen",
      `127.0.0.1:${freePort()}`,
      "s3",
      "--bucket",
      "nowhere-bucket",
      "--endpoint",
      `http://127.0.0.1:${freePort()}`,
      "--access-key",
      "k",
      "--secret-key",
      "s",
    ]);
    assert(result.code !== 0, "started without its bucket");
    assertMatch(result.stdout + result.stderr, /nowhere-bucket/);
  });
});
