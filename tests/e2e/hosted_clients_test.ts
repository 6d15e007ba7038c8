/**
 * Real clients pushing to a hosted repository and pulling back out: skopeo copies a multi-arch
 * OCI image (an index over two platforms) in with --all, and out again to an OCI layout whose
 * every blob and manifest must be byte-exact; podman and a real dockerd each pull it, push it to
 * another hosted repository and pull that back; containerd's ctr pushes all platforms of it.
 */
import { assertEquals } from "../support/assert.ts";
import {
  blobsOf,
  buildImage,
  buildIndex,
  manifestsOf,
  skopeoPush,
  writeOciLayout,
} from "../support/images.ts";
import { podmanClient, startContainerd } from "../support/clients.ts";
import { startDockerd } from "../support/dockerd.ts";
import { startMirror } from "../support/mirror.ts";
import { run, sha256File, tempDir } from "../support/tools.ts";

Deno.test("skopeo copy --all into a hosted repository and back out, byte-exact", async () => {
  await using mirror = await startMirror({
    extraArgs: ["--hosted", "myorg", "--allow-anonymous-push"],
  });
  await using dir = await tempDir();
  const image = buildIndex({ layers: 2 });
  await writeOciLayout(dir.join("in"), image, "1");
  await skopeoPush({ host: mirror.host }, dir.join("in"), "1", "myorg/multi");

  const head = await mirror.fetch("/v2/myorg/multi/manifests/1", { method: "HEAD" });
  assertEquals(head.status, 200);
  assertEquals(
    head.headers.get("docker-content-digest"),
    image.digest,
    "the index kept its digest",
  );

  await run("skopeo", [
    "copy",
    "--all",
    "--preserve-digests",
    "--src-tls-verify=false",
    "--retry-times=0",
    `docker://${mirror.host}/myorg/multi:1`,
    `oci:${dir.join("out")}:1`,
  ], { check: true, timeoutMs: 120_000 });
  for (const blob of [...blobsOf(image), ...manifestsOf(image)]) {
    assertEquals(await sha256File(dir.join("out", "blobs", "sha256", blob.sha256)), blob.sha256);
  }
  const tags = await mirror.fetch("/v2/myorg/multi/tags/list");
  assertEquals(await tags.json(), { name: "myorg/multi", tags: ["1"] });
});

Deno.test("podman pull, push to another hosted repository, pull again", async () => {
  await using mirror = await startMirror({
    extraArgs: ["--hosted", "myorg", "--allow-anonymous-push"],
  });
  await using dir = await tempDir();
  const image = buildIndex({ layers: 2 });
  await writeOciLayout(dir.join("in"), image, "1");
  await skopeoPush({ host: mirror.host }, dir.join("in"), "1", "myorg/app");
  await using podman = await podmanClient();
  const source = `${mirror.host}/myorg/app:1`;
  const copy = `${mirror.host}/myorg/copy:2`;
  await podman.pull(source, { tlsVerify: false });
  const id = async (ref: string) =>
    (await podman.podman(["image", "inspect", "--format", "{{.Id}}", ref], { check: true }))
      .stdout.trim();
  const pulledId = await id(source);
  await podman.podman(["tag", source, copy], { check: true });
  await podman.podman(["push", "--tls-verify=false", copy], { check: true });
  await podman.podman(["rmi", "-f", source, copy], { check: true });
  await podman.pull(copy, { tlsVerify: false });
  assertEquals(await id(copy), pulledId, "the same image (config digest) came back");
  const tags = await mirror.fetch("/v2/myorg/copy/tags/list");
  assertEquals(await tags.json(), { name: "myorg/copy", tags: ["2"] });
});

Deno.test("docker pull, push to another hosted repository, pull again (real dockerd)", async () => {
  await using mirror = await startMirror({
    extraArgs: ["--hosted", "myorg", "--allow-anonymous-push"],
  });
  await using dir = await tempDir();
  const image = buildImage({ layers: 2 });
  await writeOciLayout(dir.join("in"), image, "1");
  await skopeoPush({ host: mirror.host }, dir.join("in"), "1", "myorg/dk");
  await using docker = await startDockerd();
  const source = `${mirror.host}/myorg/dk:1`;
  const copy = `${mirror.host}/myorg/dk-copy:2`;
  await docker.cli(["pull", source], { check: true });
  assertEquals((await docker.inspect(source)).Id, image.config.digest);
  await docker.cli(["tag", source, copy], { check: true });
  await docker.cli(["push", copy], { check: true });
  await docker.cli(["rmi", source, copy], { check: true });
  await docker.cli(["pull", copy], { check: true });
  const pulled = await docker.inspect(copy);
  assertEquals(pulled.Id, image.config.digest, "the same image came back");
  assertEquals(pulled.RootFS.Layers, image.layers.map((l) => l.diffId));
});

Deno.test("ctr images pull --all-platforms, then ctr images push to another hosted repository", async () => {
  await using mirror = await startMirror({
    extraArgs: ["--hosted", "myorg", "--allow-anonymous-push"],
  });
  await using dir = await tempDir();
  const image = buildIndex({ layers: 2 });
  await writeOciLayout(dir.join("in"), image, "1");
  await skopeoPush({ host: mirror.host }, dir.join("in"), "1", "myorg/ctr");
  await using containerd = await startContainerd();
  const source = `${mirror.host}/myorg/ctr:1`;
  const copy = `${mirror.host}/myorg/ctr-copy:2`;
  await containerd.pull(source, { plainHttp: true, allPlatforms: true });
  await containerd.ctr(["images", "tag", source, copy], { check: true });
  await containerd.ctr(["images", "push", "--plain-http", copy], { check: true });
  const head = await mirror.fetch("/v2/myorg/ctr-copy/manifests/2", { method: "HEAD" });
  assertEquals(head.headers.get("docker-content-digest"), image.digest, "the same index");
  for (const blob of [...blobsOf(image), ...manifestsOf(image)]) {
    const path = blob.mediaType.includes("manifest") || blob.mediaType.includes("index")
      ? "manifests"
      : "blobs";
    const r = await mirror.fetch(`/v2/myorg/ctr-copy/${path}/${blob.digest}`, { method: "HEAD" });
    assertEquals(r.status, 200, `${blob.digest} pushed`);
  }
});
