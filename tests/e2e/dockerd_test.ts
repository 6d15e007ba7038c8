/**
 * A REAL Docker daemon (dockerd 20.10 from Debian's docker.io) pulling through the mirror with
 * `--registry-mirror`, the way README.md tells Docker users to (`registry-mirrors` in
 * daemon.json is the same setting):
 *
 * - single-platform images (Docker schema 2 and OCI), a multi-platform Docker manifest list and
 *   OCI index (dockerd takes linux/amd64), and `docker pull NAME@sha256:...`;
 * - what dockerd asked the mirror, from the mirror's own log: plain `/v2/library/NAME/...` paths,
 *   which the mirror serves from its default namespace (here `registry.test`, a real
 *   docker-registry standing in for Docker Hub);
 * - what Docker ended up with: the image ID (the config's digest), the layer diff IDs, the repo
 *   digest, and the layer bytes (`docker save`), all equal to what was pushed upstream;
 * - a second pull after `docker rmi` is served from the cache (upstream not asked).
 *
 * Docker Hub cannot be reached by construction: dockerd runs with HTTPS_PROXY set to a closed
 * loopback port (tests/support/dockerd.ts), so its fallback to registry-1.docker.io fails at once;
 * a tag the mirror does not have shows that fallback being taken, and failing.
 */
import { assert, assertEquals, assertMatch } from "../support/assert.ts";
import { assertDockerImage, CLOSED_PROXY, startDockerd } from "../support/dockerd.ts";
import {
  blobsOf,
  buildImage,
  buildIndex,
  type Image,
  imageFor,
  type Index,
  LINUX_ARM64,
  pushImage,
} from "../support/images.ts";
import { startMirror } from "../support/mirror.ts";
import {
  assertAllServed,
  assertOnlyMirrorAskedUpstream,
  type MirrorRequest,
  mirrorRequests,
  show,
} from "../support/mirror_log.ts";
import { startUpstream } from "../support/upstream.ts";
import { isListening } from "../support/tools.ts";

const NS = "registry.test";

Deno.test("dockerd: registry-mirrors pulls through the mirror, never Docker Hub", async (t) => {
  // dockerd's proxy: nothing may listen there, so whatever dockerd sends past the mirror fails.
  assert(!await isListening(Number(new URL(CLOSED_PROXY).port)), `${CLOSED_PROXY} must be closed`);
  await using up = await startUpstream();
  await using mirror = await startMirror({
    upstreams: [{ namespace: NS, host: up.host, tls: false }],
    defaultNamespace: NS,
  });
  const images = {
    docker: await pushImage(up, "library/dk-single", "1", buildImage({ format: "docker" })),
    oci: await pushImage(up, "library/dk-oci", "1", buildImage({ format: "oci", layers: 3 })),
    list: await pushImage(up, "library/dk-list", "1", buildIndex({ format: "docker" })),
    index: await pushImage(up, "library/dk-index", "1", buildIndex({ format: "oci" })),
    byDigest: await pushImage(up, "library/dk-digest", "1", buildImage({ format: "docker" })),
  };
  await using docker = await startDockerd({ registryMirror: mirror.url });
  const reset = () => {
    mirror.clearLogs();
    up.clearLog();
  };

  const info = JSON.parse(
    (await docker.cli(["info", "--format", "{{json .}}"], {
      check: true,
    })).stdout,
  );
  assertEquals(info.RegistryConfig.Mirrors, [`${mirror.url}/`], "dockerd uses the mirror");

  /**
   * What dockerd asked for a pull of `repo` by tag: the ping, HEAD of the tag, the manifest (and
   * for an index, the amd64 manifest) by digest, then config and layers, in whatever order its
   * parallel downloads took.
   */
  function assertPullRequests(
    requests: MirrorRequest[],
    repo: string,
    manifests: string[],
    image: Image,
  ) {
    assertAllServed(requests);
    const base = `/v2/library/${repo}`;
    const lines = requests.map((r) => `${r.method} ${r.path}`);
    assertEquals(lines.slice(0, 2 + manifests.length), [
      "GET /v2/",
      `HEAD ${base}/manifests/1`,
      ...manifests.map((digest) => `GET ${base}/manifests/${digest}`),
    ], `ping, tag, manifests by digest:\n${show(requests)}`);
    assertEquals(
      lines.slice(2 + manifests.length).sort(),
      blobsOf(image).map((b) => `GET ${base}/blobs/${b.digest}`).sort(),
      `then exactly the config and layers:\n${show(requests)}`,
    );
  }

  await t.step("single-platform Docker schema 2 image: plain /v2/library paths", async () => {
    reset();
    const image = images.docker;
    const started = performance.now();
    const pulled = await docker.cli(["pull", "dk-single:1"], { check: true });
    console.log(`docker pull dk-single:1 (cold): ${(performance.now() - started).toFixed(0)} ms`);
    assertMatch(pulled.stdout, new RegExp(`Digest: ${image.digest}`));
    assertMatch(pulled.stdout, /Downloaded newer image for dk-single:1/);
    await assertDockerImage(docker, "dk-single:1", "dk-single", image, image.digest);

    const requests = await mirrorRequests(mirror);
    assertPullRequests(requests, "dk-single", [image.digest], image);
    for (const blob of blobsOf(image)) assertEquals(await up.countBlobGets(blob.digest), 1);
    await assertOnlyMirrorAskedUpstream(up);
  });

  await t.step("single-platform OCI image", async () => {
    reset();
    const image = images.oci;
    await docker.cli(["pull", "dk-oci:1"], { check: true });
    await assertDockerImage(docker, "dk-oci:1", "dk-oci", image, image.digest);
    assertPullRequests(await mirrorRequests(mirror), "dk-oci", [image.digest], image);
    await assertOnlyMirrorAskedUpstream(up);
  });

  for (const [name, repo] of [["Docker manifest list", "dk-list"], ["OCI index", "dk-index"]]) {
    await t.step(`multi-platform ${name}: dockerd takes linux/amd64 only`, async () => {
      reset();
      const index: Index = repo === "dk-list" ? images.list : images.index;
      const amd64 = imageFor(index);
      const arm64 = imageFor(index, LINUX_ARM64);
      const pulled = await docker.cli(["pull", `${repo}:1`], { check: true });
      assertMatch(pulled.stdout, new RegExp(`Digest: ${index.digest}`));
      // The repo digest is the index's (what `docker pull NAME@` takes), the image is amd64's.
      await assertDockerImage(docker, `${repo}:1`, repo, amd64, index.digest);
      const requests = await mirrorRequests(mirror);
      assertPullRequests(requests, repo, [index.digest, amd64.digest], amd64);
      for (const blob of [arm64.manifest, ...blobsOf(arm64)]) {
        assert(!show(requests).includes(blob.digest), `no arm64 content:\n${show(requests)}`);
      }
      await assertOnlyMirrorAskedUpstream(up);
    });
  }

  await t.step("docker pull NAME@sha256:... (never pulled by tag)", async () => {
    reset();
    const image = images.byDigest;
    const ref = `dk-digest@${image.digest}`;
    const pulled = await docker.cli(["pull", ref], { check: true });
    assertMatch(pulled.stdout, new RegExp(`Digest: ${image.digest}`));
    await assertDockerImage(docker, ref, "dk-digest", image, image.digest);
    const requests = await mirrorRequests(mirror);
    assertAllServed(requests);
    const base = "/v2/library/dk-digest";
    const lines = requests.map((r) => `${r.method} ${r.path}`);
    assertEquals(lines.filter((l) => l.includes("/manifests/")), [
      `GET ${base}/manifests/${image.digest}`,
    ], `one GET of the manifest by digest, no tag:\n${show(requests)}`);
    assertEquals(
      lines.filter((l) => l.includes("/blobs/")).sort(),
      blobsOf(image).map((b) => `GET ${base}/blobs/${b.digest}`).sort(),
    );
    await assertOnlyMirrorAskedUpstream(up);
  });

  await t.step("after docker rmi, the same pulls are served from the cache", async () => {
    const refs = ["dk-single:1", "dk-oci:1", "dk-list:1", "dk-index:1"];
    await docker.cli(["rmi", ...refs, `dk-digest@${images.byDigest.digest}`], { check: true });
    assertEquals((await docker.cli(["images", "-q"], { check: true })).stdout.trim(), "");
    reset();
    for (const ref of refs) await docker.cli(["pull", ref], { check: true });
    await assertDockerImage(
      docker,
      "dk-single:1",
      "dk-single",
      images.docker,
      images.docker.digest,
    );
    await assertDockerImage(
      docker,
      "dk-list:1",
      "dk-list",
      imageFor(images.list),
      images.list.digest,
    );
    const requests = await mirrorRequests(mirror);
    assertAllServed(requests);
    assertEquals(requests.filter((r) => r.path.includes("/blobs/")).length, 3 + 4 + 3 + 3);
    // Tags are trusted for manifest_invalidation_time (1h): no upstream request at all.
    assertEquals(await up.count(), 0, "served from the cache");
  });

  await t.step(
    "a tag the mirror lacks: dockerd falls back to Docker Hub, which it cannot reach",
    async () => {
      reset();
      const missing = await docker.cli(["pull", "dk-missing:1"], { timeoutMs: 60_000 });
      assert(!missing.success, "the pull must fail");
      // dockerd's fallback went to the real Docker Hub, through the closed proxy.
      assertMatch(missing.stderr, /registry-1\.docker\.io.*proxyconnect tcp: .*connection refused/);
      const requests = await mirrorRequests(mirror);
      assertEquals(
        requests.map((r) => `${r.method} ${r.path} ${r.status}`),
        [
          "GET /v2/ 200",
          "HEAD /v2/library/dk-missing/manifests/1 404",
          "GET /v2/library/dk-missing/manifests/1 404",
        ],
        show(requests),
      );
    },
  );
});
