/**
 * Proves the test harness against the real components, without the mirror: real docker-registry
 * upstreams (anonymous, htpasswd, token, HTTPS), images built by hand and pushed over HTTP or by
 * skopeo, pulled back by skopeo and compared byte for byte, and the access log counts.
 */
import { assert, assertEquals, assertMatch } from "../support/assert.ts";
import {
  blobsOf,
  buildImage,
  buildIndex,
  imageFor,
  MediaTypes,
  pushImage,
  pushRandomBlob,
  skopeoPullDir,
  skopeoPush,
  writeOciLayout,
} from "../support/images.ts";
import { podmanClient, startContainerd } from "../support/clients.ts";
import { startMirror, upstreamYaml } from "../support/mirror.ts";
import { startUpstream, type Upstream } from "../support/upstream.ts";
import { run, sha256File, tempDir } from "../support/tools.ts";

/** Pulls `repo:ref` with skopeo into a dir and checks every blob of `image` against the files. */
async function pullAndCompare(
  up: Upstream,
  repo: string,
  reference: string,
  expected: ReturnType<typeof buildImage>,
) {
  await using dest = await tempDir();
  await skopeoPullDir(up, repo, reference, dest.join("image"));
  for (const blob of [expected.config, ...expected.layers]) {
    assertEquals(await sha256File(dest.join("image", blob.sha256)), blob.sha256);
  }
  const manifest = await Deno.readFile(dest.join("image", "manifest.json"));
  assertEquals(manifest, expected.manifest.bytes, "skopeo kept the manifest bytes");
}

Deno.test("harness: anonymous upstream serves an OCI index pushed over HTTP", async () => {
  await using up = await startUpstream();
  assertEquals(up.host, `127.0.0.1:${up.port}`);
  const index = await pushImage(up, "library/multi", "1", buildIndex({ layers: 2 }));
  assertEquals(index.images.length, 2);

  // The registry hands back exactly the bytes pushed, with the right media type.
  const response = await up.fetch(`/v2/library/multi/manifests/1`, {
    headers: { accept: MediaTypes.ociIndex },
  });
  assertEquals(response.status, 200);
  assertEquals(response.headers.get("content-type"), MediaTypes.ociIndex);
  assertEquals(response.headers.get("docker-content-digest"), index.digest);
  assertEquals(new Uint8Array(await response.arrayBuffer()), index.manifest.bytes);

  up.clearLog();
  const amd64 = imageFor(index);
  await pullAndCompare(up, "library/multi", "1", amd64);
  for (const layer of amd64.layers) assertEquals(await up.countBlobGets(layer.digest), 1);
  const arm64 = imageFor(index, { os: "linux", architecture: "arm64" });
  assertEquals(await up.countBlobGets(arm64.layers[0].digest), 0);
  assert(await up.countManifestGets() >= 2, "skopeo GETs the index and the amd64 manifest");
  assertEquals(await up.count({ path: "/_harness_sync_" }), 0, "sync requests are hidden");
});

Deno.test("harness: basic-auth upstream serves a Docker schema 2 image", async () => {
  await using up = await startUpstream({ auth: "basic", username: "alice", password: "s3cret" });
  assertEquals(up.creds, "alice:s3cret");
  const image = await pushImage(up, "team/app", "v1", buildImage({ format: "docker", layers: 3 }));
  assertEquals(image.mediaType, MediaTypes.dockerManifest);
  assertEquals(image.layers[0].mediaType, MediaTypes.dockerLayerGzip);

  const anonymous = await up.fetch("/v2/team/app/manifests/v1");
  await anonymous.body?.cancel();
  assertEquals(anonymous.status, 401);
  assertMatch(anonymous.headers.get("www-authenticate") ?? "", /^Basic /);

  await pullAndCompare(up, "team/app", "v1", image);
  // Wrong credentials are refused by skopeo's pull too.
  await using dest = await tempDir();
  const refused = await run("skopeo", [
    "copy",
    "--src-tls-verify=false",
    "--src-creds",
    "alice:wrong",
    `docker://${up.host}/team/app:v1`,
    `dir:${dest.join("x")}`,
  ]);
  assert(!refused.success, "wrong credentials must fail");
  assertEquals(
    await up.count({ method: "GET", path: "/v2/team/app/manifests/v1", status: 401 }),
    2,
  );
});

Deno.test("harness: token-auth upstream with an image pushed by skopeo from an OCI layout", async () => {
  await using up = await startUpstream({ auth: "token" });
  const tokens = up.tokenServer!;
  await using layout = await tempDir();
  const image = buildImage({ layers: [{ size: 10_000 }, { size: 100, gzip: false }] });
  await writeOciLayout(layout.path, image, "2.0");
  await skopeoPush(up, layout.path, "2.0", "private/tool");
  assert(tokens.tokenCount() >= 1, "skopeo fetched a token to push");
  assert(tokens.requests().some((r) => r.scopes.some((s) => /private\/tool:.*push/.test(s))));

  tokens.clearLog();
  up.clearLog();
  await pullAndCompare(up, "private/tool", "2.0", image);
  assert(tokens.tokenCount() >= 1);
  assertEquals(tokens.requests()[0].account, up.username);
  for (const layer of image.layers) assertEquals(await up.countBlobGets(layer.digest), 1);
  assertEquals(await up.countBlobGets(image.config.digest), 1);

  // Anonymous and wrong-password token requests are refused when credentials are configured.
  const anonymous = await fetch(
    `${tokens.realm}?service=${tokens.service}&scope=repository:private/tool:pull`,
  );
  await anonymous.body?.cancel();
  assertEquals(anonymous.status, 401);
  const client = up.client();
  const manifest = await client.fetch("/v2/private/tool/manifests/2.0", {
    headers: { accept: MediaTypes.ociManifest },
  });
  assertEquals(manifest.status, 200);
  assertEquals(new Uint8Array(await manifest.arrayBuffer()), image.manifest.bytes);
  assertEquals(client.tokenFetches, 1);

  tokens.failRequests(1, 503);
  const failing = await fetch(`${tokens.realm}?service=${tokens.service}`);
  await failing.body?.cancel();
  assertEquals(failing.status, 503);
});

Deno.test("harness: HTTPS upstream restarts with the same port and data", async () => {
  await using up = await startUpstream({ tls: true });
  assert(up.url.startsWith("https://"));
  const list = await pushImage(up, "library/tls", "latest", buildIndex({ format: "docker" }));
  assertEquals(list.mediaType, MediaTypes.dockerManifestList);

  await up.stop();
  assert(!up.running());
  let refused = false;
  try {
    const response = await up.fetch("/v2/");
    await response.body?.cancel();
  } catch {
    refused = true;
  }
  assert(refused, "a stopped upstream refuses connections");

  await up.restart();
  assert(up.running());
  const response = await up.fetch("/v2/library/tls/manifests/latest", {
    headers: { accept: MediaTypes.dockerManifestList },
  });
  assertEquals(response.status, 200);
  assertEquals(response.headers.get("docker-content-digest"), list.digest);
  await response.body?.cancel();
  await pullAndCompare(up, "library/tls", "latest", imageFor(list));
});

Deno.test("harness: pushRandomBlob streams a big blob", async () => {
  await using up = await startUpstream();
  const size = 24 * 1024 * 1024 + 123;
  const blob = await pushRandomBlob(up, "big/blob", size);
  assertEquals(blob.size, size);
  const response = await up.fetch(`/v2/big/blob/blobs/${blob.digest}`);
  assertEquals(response.status, 200);
  assertEquals(Number(response.headers.get("content-length")), size);
  await using dir = await tempDir();
  await Deno.writeFile(dir.join("blob"), response.body!);
  assertEquals(await sha256File(dir.join("blob")), blob.sha256);
  assertEquals(await up.countBlobGets(blob.digest), 1);
});

Deno.test("harness: startMirror runs a server process with the CLI contract", async () => {
  // A stand-in for src/main.ts: answers GET / and reports its arguments and environment.
  const fake = `
    const args = Deno.args;
    const [host, port] = args[args.indexOf("--listen") + 1].split(":");
    console.log("fake mirror args " + JSON.stringify(args));
    const server = Deno.serve({ hostname: host, port: Number(port), onListen: () => {} }, (req) =>
      new URL(req.url).pathname === "/env" ? new Response(Deno.env.get("UPSTREAM_CREDENTIALS")) :
      new Response("ok"));
    Deno.addSignalListener("SIGTERM", async () => { console.log("fake mirror stopping"); await server.shutdown(); Deno.exit(0); });
  `;
  const upstreams = [
    { namespace: "registry.test", host: "127.0.0.1:1", tls: false },
    { namespace: "private.test", host: "127.0.0.1:2", manifest_invalidation_time: "0s" },
  ];
  await using mirror = await startMirror({
    command: [Deno.execPath(), "eval", fake],
    upstreams,
    defaultNamespace: "registry.test",
    env: { UPSTREAM_CREDENTIALS: '{"private.test":{"username":"u","password":"p"}}' },
  });
  assertEquals(
    upstreamYaml(upstreams),
    '- namespace: "registry.test"\n  host: "127.0.0.1:1"\n  tls: false\n' +
      '- namespace: "private.test"\n  host: "127.0.0.1:2"\n  manifest_invalidation_time: "0s"\n',
  );
  assertEquals(await Deno.readTextFile(mirror.configFile!), upstreamYaml(upstreams));
  const line = await mirror.waitForLog(/fake mirror args/);
  assertEquals(JSON.parse(line.replace("fake mirror args ", "")), [
    "--listen",
    mirror.host,
    "--upstream-config-file",
    mirror.configFile,
    "--default-namespace",
    "registry.test",
    "filesystem",
    "--root",
    mirror.root,
  ]);
  const env = await mirror.fetch("/env");
  assertEquals(await env.text(), '{"private.test":{"username":"u","password":"p"}}');

  assertEquals((await mirror.stop())?.code, 0);
  await mirror.waitForLog(/fake mirror stopping/);
  await mirror.restart();
  const again = await mirror.fetch("/");
  assertEquals(await again.text(), "ok");
  const killed = await mirror.kill();
  assertEquals(killed?.signal, "SIGKILL");
  await mirror.start();
  assert(mirror.running());
});

Deno.test("harness: startMirror reports a process that exits before it is ready", async () => {
  let message = "";
  try {
    await startMirror({
      command: [Deno.execPath(), "eval", "console.error('bad config: nope'); Deno.exit(2)"],
    });
  } catch (e) {
    message = (e as Error).message;
  }
  assertMatch(message, /exited with code 2/);
  assertMatch(message, /bad config: nope/);
});

Deno.test("harness: built layers are tar archives real tools can read", async () => {
  const image = buildImage({
    layers: [{ size: 1000, files: { "etc/hello.txt": "hi\n", "a/b/c/deep.bin": "x" } }],
  });
  await using dir = await tempDir();
  await Deno.writeFile(dir.join("layer.tgz"), image.layers[0].bytes);
  const listing = await run("tar", ["-tzvf", dir.join("layer.tgz")], { check: true });
  for (const path of ["harness/layer-0.bin", "etc/hello.txt", "a/b/c/deep.bin"]) {
    assert(listing.stdout.includes(path), `${path} in\n${listing.stdout}`);
  }
  await run("tar", ["-xzf", dir.join("layer.tgz"), "-C", dir.path], { check: true });
  assertEquals(await Deno.readTextFile(dir.join("etc/hello.txt")), "hi\n");
  const bin = image.layers[0].files.find((f) => f.path === "harness/layer-0.bin")!;
  assertEquals(await sha256File(dir.join("harness/layer-0.bin")), bin.sha256);
  // umoci validates the whole OCI layout (manifest, config, diff_ids) when unpacking.
  await writeOciLayout(dir.join("layout"), image, "t");
  await run("umoci", [
    "raw",
    "unpack",
    "--rootless",
    "--image",
    `${dir.join("layout")}:t`,
    dir.join("rootfs"),
  ], {
    check: true,
  });
  assertEquals(await Deno.readTextFile(dir.join("rootfs/etc/hello.txt")), "hi\n");
  assertEquals(blobsOf(image).length, 2);
});

Deno.test("harness: containerd and podman unpack the hand-built images", async () => {
  await using up = await startUpstream();
  const index = await pushImage(up, "library/multi", "1", buildIndex());
  const docker = await pushImage(up, "library/docker", "1", buildImage({ format: "docker" }));

  await using containerd = await startContainerd();
  // The upstream stands in for a mirror here: registry.test resolves to it through hosts.toml.
  await containerd.pull("registry.test/library/multi:1", { mirror: up.host });
  await containerd.pull("registry.test/library/docker:1", { mirror: up.host });
  assertEquals((await containerd.images()).sort(), [
    "registry.test/library/docker:1",
    "registry.test/library/multi:1",
  ]);
  const snapshots = await containerd.ctr(["snapshots", "ls"], { check: true });
  assertMatch(snapshots.stdout, /Committed/, "layers were unpacked");
  assertEquals(await up.countManifestGets(index.digest), 1);

  await using podman = await podmanClient({
    registries: [{ prefix: "registry.test", location: up.host, insecure: true }],
  });
  await podman.pull("registry.test/library/docker:1");
  const listed = await podman.podman(["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"], {
    check: true,
  });
  assertMatch(listed.stdout, /registry\.test\/library\/docker:1 /);
  assert(docker.config.sha256.startsWith(listed.stdout.trim().split(" ")[1]), listed.stdout);
  const inspected = await podman.skopeo([
    "inspect",
    "--raw",
    "docker://registry.test/library/multi:1",
  ], {
    check: true,
  });
  assertEquals(inspected.stdout, new TextDecoder().decode(index.manifest.bytes));
});
