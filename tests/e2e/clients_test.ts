/**
 * Every real client through the mirror, end to end, configured exactly as README.md tells
 * users to (with `.test` names standing in for docker.io, ghcr.io, registry.k8s.io):
 *
 * - containerd (private daemon, `ctr images pull --hosts-dir`): plain host entry (`?ns=`) and
 *   `override_path = true` (path prefix AND `?ns=`); HEAD-first flow; digests equal upstream's;
 *   the right platform of an OCI index and of a Docker manifest list.
 * - cri-o's flow: skopeo with `--registries-conf` and podman with CONTAINERS_REGISTRIES_CONF,
 *   both through `[[registry.mirror]] location = "MIRROR/registry.test"`; `skopeo copy --all`.
 * - Docker's `registry-mirrors` naming (plain `/v2/NAME/...` means the default namespace,
 *   single-segment names get `library/`) with dockerd 24's headers; a real dockerd pulling
 *   through the mirror is tests/e2e/dockerd_test.ts.
 * - Private upstreams (Basic and Bearer token) whose credentials only the mirror holds (YAML and
 *   UPSTREAM_CREDENTIALS), and several upstreams in one process, each by `ns` and by prefix.
 *
 * The upstream names resolve to 127.0.0.1 (/etc/hosts) where ports 443 and 5000 are closed: a
 * client that bypassed the mirror would fail. Each test also checks the mirror's access log and
 * the upstream's to show who served what.
 */
import { assert, assertEquals, assertMatch } from "../support/assert.ts";
import {
  assertContainerdComplete,
  containerdContent,
  containerdImages,
  podmanClient,
  registriesConf,
  startContainerd,
} from "../support/clients.ts";
import {
  assertDirImage,
  blobsOf,
  buildImage,
  buildIndex,
  type Image,
  imageFor,
  type Index,
  LINUX_ARM64,
  manifestsOf,
  MediaTypes,
  pushImage,
} from "../support/images.ts";
import { startMirror } from "../support/mirror.ts";
import {
  assertAllServed,
  assertOnlyMirrorAskedUpstream,
  escapeRegExp,
  mirrorRequests,
  show,
} from "../support/mirror_log.ts";
import { startUpstream, type Upstream } from "../support/upstream.ts";
import { isListening, run, sha256File, tempDir } from "../support/tools.ts";

const NS = "registry.test";
const MIRROR_USER_AGENT = /^oci-registry\//;

/** What dockerd 24 sends to a `registry-mirrors` entry (moby's distribution client). */
const DOCKERD_USER_AGENT =
  "docker/24.0.7 go/go1.20.10 git-commit/311b9ff kernel/6.1.0-13-amd64 os/linux arch/amd64 " +
  "UpstreamClient(Docker-Client/24.0.7 \\(linux\\))";
const DOCKERD_MANIFEST_ACCEPT = [
  MediaTypes.dockerManifest,
  MediaTypes.dockerManifestList,
  MediaTypes.ociManifest,
  MediaTypes.ociIndex,
  "application/vnd.docker.distribution.manifest.v1+prettyjws",
  "application/json",
];

// ---------------------------------------------------------------------------------------------
// The client configuration, rendered once for the tests and for README.md

/**
 * containerd's `hosts.toml` for one registry: the plain host entry, or, given the registry's
 * name, the `override_path` layout that puts the name in the mirror's path.
 */
function hostsToml(mirrorHost: string, overridePathFor?: string): string {
  return overridePathFor === undefined
    ? `[host."http://${mirrorHost}"]\n  capabilities = ["pull", "resolve"]\n`
    : `[host."http://${mirrorHost}/v2/${overridePathFor}"]\n  capabilities = ["pull", "resolve"]\n` +
      `  override_path = true\n`;
}

/** registries.conf (cri-o, podman, skopeo): each registry mirrored at MIRROR/<registry>. */
function mirroredRegistriesConf(mirrorHost: string, registries: string[]): string {
  return registriesConf(
    registries.map((prefix) => ({ prefix, mirrors: [{ location: `${mirrorHost}/${prefix}` }] })),
  );
}

/** Docker's daemon.json. */
function daemonJson(mirrorHost: string): string {
  return JSON.stringify({ "registry-mirrors": [`http://${mirrorHost}`] }, null, 2);
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** The digest the upstream itself gives for `repo:tag` (HEAD, all manifest types accepted). */
async function upstreamDigest(up: Upstream, repo: string, tag: string): Promise<string> {
  const response = await up.client().fetch(`/v2/${repo}/manifests/${tag}`, {
    method: "HEAD",
    headers: { accept: DOCKERD_MANIFEST_ACCEPT.join(", ") },
  });
  await response.body?.cancel();
  assertEquals(response.status, 200, `upstream HEAD ${repo}:${tag}`);
  return response.headers.get("docker-content-digest")!;
}

async function pushAsTag1<T extends Image | Index>(up: Upstream, repo: string, image: T) {
  return await pushImage(up, repo, "1", image);
}

// ---------------------------------------------------------------------------------------------

Deno.test("clients: containerd, cri-o (skopeo, podman) and multi-arch pulls through the mirror", async (t) => {
  // Nothing answers on registry.test's real ports: a client that bypassed the mirror fails.
  for (const port of [443, 5000]) {
    assert(!await isListening(port), `port ${port} must be closed for this test to prove much`);
  }
  await using up = await startUpstream();
  await using mirror = await startMirror({
    upstreams: [{ namespace: NS, host: up.host, tls: false }],
    defaultNamespace: NS,
  });
  const images = {
    ctd: await pushAsTag1(up, "library/ctd", buildImage({ format: "oci" })),
    ctdOverride: await pushAsTag1(up, "library/ctd-override", buildImage({ format: "docker" })),
    multiOci: await pushAsTag1(up, "library/multi-oci", buildIndex({ format: "oci", layers: 1 })),
    multiDocker: await pushAsTag1(
      up,
      "library/multi-docker",
      buildIndex({ format: "docker", layers: 1 }),
    ),
    crio: await pushAsTag1(up, "library/crio", buildImage({ format: "docker" })),
    podman: await pushAsTag1(up, "library/podman", buildImage({ format: "oci" })),
  };
  await using containerd = await startContainerd();

  const reset = () => {
    mirror.clearLogs();
    up.clearLog();
  };

  await t.step("containerd, plain host entry: HEAD first, every request with ?ns=", async () => {
    reset();
    const image = images.ctd;
    const ref = `${NS}/library/ctd:1`;
    await containerd.pull(ref, { hostsToml: hostsToml(mirror.host) });

    const requests = await mirrorRequests(mirror);
    assertAllServed(requests);
    assertEquals(requests[0], {
      method: "HEAD",
      path: `/v2/library/ctd/manifests/1?ns=${NS}`,
      status: 200,
    }, `containerd resolves the tag with HEAD first:\n${show(requests)}`);
    assert(
      requests.some((r) =>
        r.method === "GET" && r.path === `/v2/library/ctd/manifests/${image.digest}?ns=${NS}`
      ),
      `then GETs the manifest by digest:\n${show(requests)}`,
    );
    for (const blob of blobsOf(image)) {
      assert(
        requests.some((r) => r.path === `/v2/library/ctd/blobs/${blob.digest}?ns=${NS}`),
        `blob ${blob.digest} fetched through the mirror:\n${show(requests)}`,
      );
    }
    for (const r of requests) {
      assert(r.path.endsWith(`?ns=${NS}`), `every request carries ns:\n${show(requests)}`);
      assert(r.path !== "/v2/" && !r.path.startsWith("/v2/?"), "containerd never pings /v2/");
    }

    for (const blob of blobsOf(image)) assertEquals(await up.countBlobGets(blob.digest), 1);
    await assertOnlyMirrorAskedUpstream(up);
    const digest = (await containerdImages(containerd)).get(ref);
    assertEquals(digest, image.digest);
    assertEquals(digest, await upstreamDigest(up, "library/ctd", "1"));
    await assertContainerdComplete(containerd, ref);
  });

  await t.step("containerd, override_path = true: path prefix AND ?ns=", async () => {
    reset();
    const image = images.ctdOverride;
    const ref = `${NS}/library/ctd-override:1`;
    await containerd.pull(ref, { hostsToml: hostsToml(mirror.host, NS) });

    const requests = await mirrorRequests(mirror);
    assertAllServed(requests);
    assertEquals(requests[0], {
      method: "HEAD",
      path: `/v2/${NS}/library/ctd-override/manifests/1?ns=${NS}`,
      status: 200,
    }, show(requests));
    for (const r of requests) {
      assert(
        r.path.startsWith(`/v2/${NS}/library/ctd-override/`) && r.path.endsWith(`?ns=${NS}`),
        `prefix and ns on every request:\n${show(requests)}`,
      );
    }
    await assertOnlyMirrorAskedUpstream(up);
    const digest = (await containerdImages(containerd)).get(ref);
    assertEquals(digest, image.digest);
    assertEquals(digest, await upstreamDigest(up, "library/ctd-override", "1"));
    await assertContainerdComplete(containerd, ref);
  });

  await t.step(
    "containerd, warm cache: a second pull (other layout) never reaches upstream",
    async () => {
      await containerd.removeAllImages();
      reset();
      const ref = `${NS}/library/ctd:1`;
      await containerd.pull(ref, { hostsToml: hostsToml(mirror.host, NS) });
      assertEquals((await containerdImages(containerd)).get(ref), images.ctd.digest);
      await assertContainerdComplete(containerd, ref);
      assertAllServed(await mirrorRequests(mirror));
      assertEquals(await up.count(), 0, "served from the cache, whichever path the client used");
    },
  );

  await t.step("containerd bypassing the mirror cannot reach registry.test", async () => {
    const direct = await containerd.pull(`${NS}/library/ctd:1`, {
      check: false,
      timeoutMs: 30_000,
    });
    assert(!direct.success, "a pull without the mirror must fail");
    assertMatch(direct.stderr, /registry\.test.*connection refused/);

    // With the mirror but a tag it does not have: 404, then containerd's own fallback to the
    // registry itself (no `server` line in hosts.toml), which fails the same way.
    reset();
    const missing = await containerd.pull(`${NS}/library/ctd:missing`, {
      hostsToml: hostsToml(mirror.host),
      check: false,
      timeoutMs: 30_000,
    });
    assert(!missing.success);
    assertMatch(missing.stderr, /https:\/\/registry\.test\/v2\/.*connection refused/);
    assertEquals(await mirrorRequests(mirror), [
      { method: "HEAD", path: `/v2/library/ctd/manifests/missing?ns=${NS}`, status: 404 },
    ]);
  });

  await t.step("containerd, OCI index: pulls only the host platform (linux/amd64)", async () => {
    reset();
    const index = images.multiOci;
    const amd64 = imageFor(index);
    const arm64 = imageFor(index, LINUX_ARM64);
    const ref = `${NS}/library/multi-oci:1`;
    await containerd.pull(ref, { hostsToml: hostsToml(mirror.host) });

    const requests = await mirrorRequests(mirror);
    assertAllServed(requests);
    const paths = requests.map((r) => `${r.method} ${r.path}`);
    const base = `/v2/library/multi-oci`;
    assertEquals(paths.slice(0, 3), [
      `HEAD ${base}/manifests/1?ns=${NS}`,
      `GET ${base}/manifests/${index.digest}?ns=${NS}`,
      `GET ${base}/manifests/${amd64.digest}?ns=${NS}`,
    ], `HEAD tag, GET index, GET the platform manifest:\n${show(requests)}`);
    for (const blob of blobsOf(arm64)) {
      assert(!paths.some((p) => p.includes(blob.digest)), `no arm64 blob:\n${show(requests)}`);
    }
    assert(!paths.some((p) => p.includes(arm64.digest)), "no arm64 manifest");

    assertEquals((await containerdImages(containerd)).get(ref), index.digest);
    const content = await containerdContent(containerd);
    for (const blob of [amd64.manifest, ...blobsOf(amd64)]) assert(content.has(blob.digest));
    for (const blob of [arm64.manifest, ...blobsOf(arm64)]) assert(!content.has(blob.digest));
    await assertContainerdComplete(containerd, ref);
  });

  await t.step("containerd, Docker manifest list: --platform linux/arm64 gets arm64", async () => {
    reset();
    const list = images.multiDocker;
    const amd64 = imageFor(list);
    const arm64 = imageFor(list, LINUX_ARM64);
    const ref = `${NS}/library/multi-docker:1`;
    await containerd.pull(ref, {
      hostsToml: hostsToml(mirror.host, NS),
      platform: "linux/arm64",
    });

    const requests = await mirrorRequests(mirror);
    assertAllServed(requests);
    const base = `/v2/${NS}/library/multi-docker`;
    assertEquals(requests.slice(0, 3).map((r) => `${r.method} ${r.path}`), [
      `HEAD ${base}/manifests/1?ns=${NS}`,
      `GET ${base}/manifests/${list.digest}?ns=${NS}`,
      `GET ${base}/manifests/${arm64.digest}?ns=${NS}`,
    ], show(requests));
    assertEquals((await containerdImages(containerd)).get(ref), list.digest);
    const content = await containerdContent(containerd);
    for (const blob of [arm64.manifest, ...blobsOf(arm64)]) assert(content.has(blob.digest));
    for (const blob of [amd64.manifest, ...blobsOf(amd64)]) assert(!content.has(blob.digest));
  });

  await using podman = await podmanClient({ mirror: mirror.host, mirroredRegistries: [NS] });

  await t.step("cri-o flow with skopeo --registries-conf: prefix paths, never ns", async () => {
    // What podman, cri-o and skopeo read: registry.test is mirrored at MIRROR/registry.test.
    assertEquals(
      await Deno.readTextFile(podman.registriesConfFile),
      mirroredRegistriesConf(mirror.host, [NS]),
    );
    assertMatch(
      await Deno.readTextFile(podman.registriesConfFile),
      new RegExp(
        `\\[\\[registry\\.mirror\\]\\]\\nlocation = "${escapeRegExp(mirror.host)}/${NS}"\\n` +
          `insecure = true`,
      ),
    );
    reset();
    await using dest = await tempDir();
    await podman.skopeo([
      "copy",
      "--retry-times=0",
      `docker://${NS}/library/crio:1`,
      `dir:${dest.join("crio")}`,
    ], { check: true });
    await assertDirImage(dest.join("crio"), images.crio);

    const requests = await mirrorRequests(mirror);
    assertAllServed(requests);
    assert(requests.some((r) => r.path === "/v2/"), `skopeo pings /v2/:\n${show(requests)}`);
    assert(
      requests.some((r) => r.path === `/v2/${NS}/library/crio/manifests/1`),
      show(requests),
    );
    for (const r of requests) {
      assert(!r.path.includes("ns="), `no ns from skopeo:\n${show(requests)}`);
      assert(r.path === "/v2/" || r.path.startsWith(`/v2/${NS}/library/crio/`), show(requests));
    }
    for (const blob of blobsOf(images.crio)) assertEquals(await up.countBlobGets(blob.digest), 1);
    await assertOnlyMirrorAskedUpstream(up);

    // skopeo inspect lists tags; through registries.conf it asks the real registry for them,
    // so it is pointed at the mirror's prefixed name directly.
    const inspected = await run("skopeo", [
      "inspect",
      "--tls-verify=false",
      "--retry-times=0",
      `docker://${mirror.host}/${NS}/library/crio:1`,
    ], { check: true });
    const inspect = JSON.parse(inspected.stdout);
    assertEquals(inspect.Digest, images.crio.digest);
    assertEquals(inspect.RepoTags, ["1"]);

    // Control: the same registries.conf without the mirror cannot reach registry.test at all.
    await using conf = await tempDir();
    await Deno.writeTextFile(conf.join("registries.conf"), registriesConf([{ prefix: NS }]));
    const direct = await run("skopeo", [
      "--registries-conf",
      conf.join("registries.conf"),
      "inspect",
      "--retry-times=0",
      `docker://${NS}/library/crio:1`,
    ], { timeoutMs: 30_000 });
    assert(!direct.success, "skopeo without the mirror must fail");
    assertMatch(direct.stderr, /connection refused/i);
  });

  await t.step("skopeo copy --all through the mirror copies both platforms", async () => {
    await using dest = await tempDir();
    for (const index of [images.multiOci, images.multiDocker]) {
      const repo = index === images.multiOci ? "multi-oci" : "multi-docker";
      reset();
      await podman.skopeo([
        "copy",
        "--all",
        "--retry-times=0",
        `docker://${NS}/library/${repo}:1`,
        `dir:${dest.join(repo)}`,
      ], { check: true });
      assertEquals(await Deno.readFile(dest.join(repo, "manifest.json")), index.manifest.bytes);
      for (const image of index.images) {
        for (const blob of [image.manifest, ...blobsOf(image)]) {
          const path = blob === image.manifest
            ? dest.join(repo, `${blob.sha256}.manifest.json`)
            : dest.join(repo, blob.sha256);
          assertEquals(await sha256File(path), blob.sha256, `${repo} ${blob.digest}`);
        }
      }
      const requests = await mirrorRequests(mirror);
      assertAllServed(requests);
      for (const manifest of manifestsOf(index).slice(1)) {
        assert(
          requests.some((r) => r.path === `/v2/${NS}/library/${repo}/manifests/${manifest.digest}`),
          `both platform manifests through the mirror:\n${show(requests)}`,
        );
      }
    }
  });

  await t.step(
    "podman with CONTAINERS_REGISTRIES_CONF (vfs) pulls registry.test/... via the mirror",
    async () => {
      reset();
      const image = images.podman;
      const ref = `${NS}/library/podman:1`;
      await podman.pull(ref);
      const listed = await podman.podman([
        "images",
        "--no-trunc",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.ID}} {{.Digest}}",
      ], { check: true });
      assertEquals(
        listed.stdout.trim(),
        `${ref} sha256:${image.config.sha256} ${image.digest}`,
        "podman stored the upstream's image under its real name",
      );
      const mounted = await podman.podman(["image", "mount", ref], { check: true });
      try {
        const layerText = await Deno.readTextFile(`${mounted.stdout.trim()}/harness/layer-1.txt`);
        assertMatch(layerText, /^oci-registry test layer 1 of image /);
      } finally {
        await podman.podman(["image", "unmount", ref], { check: true });
      }

      const requests = await mirrorRequests(mirror);
      assertAllServed(requests);
      assert(
        requests.some((r) => r.path === `/v2/${NS}/library/podman/manifests/1`),
        show(requests),
      );
      for (const blob of blobsOf(image)) {
        assert(
          requests.some((r) =>
            r.method === "GET" && r.path === `/v2/${NS}/library/podman/blobs/${blob.digest}`
          ),
          `blob via the mirror:\n${show(requests)}`,
        );
        assertEquals(await up.countBlobGets(blob.digest), 1);
      }
      await assertOnlyMirrorAskedUpstream(up);
    },
  );
});

Deno.test("clients: private Basic and Bearer upstreams and docker.io in one mirror, each by ns and by prefix, clients anonymous", async (t) => {
  const basicCreds = { username: "mirror-basic", password: "basic-Secret-4711" };
  const tokenCreds = { username: "mirror-token", password: "token-Secret-0815" };
  await using basic = await startUpstream({ auth: "basic", ...basicCreds });
  await using token = await startUpstream({ auth: "token", ...tokenCreds });
  await using hub = await startUpstream();
  await using mirror = await startMirror({
    upstreams: [
      // Basic upstream: credentials in the YAML file.
      { namespace: "private.test", host: basic.host, tls: false, ...basicCreds },
      // Bearer-token upstream: credentials from UPSTREAM_CREDENTIALS only.
      { namespace: "token.test", host: token.host, tls: false },
      // Docker Hub stand-in: the default namespace (no --default-namespace flag).
      { namespace: "docker.io", host: hub.host, tls: false },
    ],
    env: { UPSTREAM_CREDENTIALS: JSON.stringify({ "token.test": tokenCreds }) },
  });
  const upstreams = { "private.test": basic, "token.test": token, "docker.io": hub };
  type Namespace = keyof typeof upstreams;
  const namespaces = Object.keys(upstreams) as Namespace[];
  const repoOf = (ns: Namespace) => ns === "docker.io" ? "library/hello" : "team/app";
  // The same repository and tag on every upstream, each a different image: only the namespace
  // tells them apart. One tag per client, so that each client's pull is a cold one.
  const images = new Map<string, Image>();
  for (const ns of namespaces) {
    for (const tag of ["ctd", "crio"]) {
      const image = buildImage({ format: tag === "ctd" ? "oci" : "docker", layers: 1 });
      images.set(`${ns}:${tag}`, await pushImage(upstreams[ns], repoOf(ns), tag, image));
    }
  }
  // What each upstream itself says the tag's digest is (asked before the logs are cleared).
  const upstreamDigests = new Map<string, string>();
  for (const ns of namespaces) {
    upstreamDigests.set(`${ns}:ctd`, await upstreamDigest(upstreams[ns], repoOf(ns), "ctd"));
  }
  const reset = () => mirror.clearLogs();

  await t.step("the private upstreams refuse anonymous clients", async () => {
    for (const up of [basic, token]) {
      const response = await up.fetch("/v2/team/app/manifests/ctd");
      await response.body?.cancel();
      assertEquals(response.status, 401);
    }
    const anonymousToken = await fetch(
      `${token.tokenServer!.realm}?service=${token.tokenServer!.service}` +
        `&scope=repository:team/app:pull`,
    );
    await anonymousToken.body?.cancel();
    assertEquals(anonymousToken.status, 401);
    // From here on, the upstreams' logs show only what the mirror asked for.
    for (const up of Object.values(upstreams)) up.clearLog();
  });

  await using containerd = await startContainerd();

  await t.step("containerd (no credentials) pulls from each upstream by ?ns=", async () => {
    reset();
    for (const ns of namespaces) {
      const ref = `${ns}/${repoOf(ns)}:ctd`;
      await containerd.pull(ref, { hostsToml: hostsToml(mirror.host) });
      assertEquals((await containerdImages(containerd)).get(ref), images.get(`${ns}:ctd`)!.digest);
      assertEquals(
        (await containerdImages(containerd)).get(ref),
        upstreamDigests.get(`${ns}:ctd`),
      );
      await assertContainerdComplete(containerd, ref);
    }
    const requests = await mirrorRequests(mirror);
    assertAllServed(requests);
    for (const ns of namespaces) {
      assertEquals(
        requests.filter((r) => r.path.endsWith(`?ns=${ns}`) && r.path.includes(repoOf(ns))).length,
        // HEAD tag, GET manifest by digest, config, one layer
        4,
        `${ns}:\n${show(requests)}`,
      );
    }
  });

  const podman = await podmanClient({ mirror: mirror.host, mirroredRegistries: namespaces });
  try {
    await t.step("podman (no credentials) pulls from each upstream by path prefix", async () => {
      reset();
      for (const ns of namespaces) {
        const ref = `${ns}/${repoOf(ns)}:crio`;
        const image = images.get(`${ns}:crio`)!;
        await podman.pull(ref);
        const listed = await podman.podman(
          ["images", "--no-trunc", "--format", "{{.ID}} {{.Digest}}", ref],
          { check: true },
        );
        assertEquals(listed.stdout.trim(), `sha256:${image.config.sha256} ${image.digest}`);
      }
      const requests = await mirrorRequests(mirror);
      assertAllServed(requests);
      for (const ns of namespaces) {
        const prefixed = requests.filter((r) => r.path.startsWith(`/v2/${ns}/${repoOf(ns)}/`));
        // tag, config, one layer
        assertEquals(prefixed.length, 3, `${ns}:\n${show(requests)}`);
      }
      assert(requests.every((r) => !r.path.includes("ns=")), show(requests));

      // Tag lists of the private upstreams too, for an anonymous skopeo (by prefix).
      for (const ns of ["private.test", "token.test"]) {
        const tags = await run("skopeo", [
          "list-tags",
          "--tls-verify=false",
          "--retry-times=0",
          `docker://${mirror.host}/${ns}/team/app`,
        ], { check: true });
        assertEquals(JSON.parse(tags.stdout).Tags.sort(), ["crio", "ctd"], ns);
      }
    });
  } finally {
    await podman.close();
  }

  await t.step("the mirror authenticated upstream with its own credentials", async () => {
    // Basic: every manifest and blob request the upstream answered 200 carried the YAML creds.
    await basic.sync();
    await token.sync();
    const basicOk = basic.requests().filter((r) => r.status === 200);
    assert(basicOk.length >= 6, `basic upstream served the pulls: ${basicOk.length}`);
    for (const r of basic.requests()) assertMatch(r.userAgent, MIRROR_USER_AGENT);
    // Bearer: tokens were issued to the UPSTREAM_CREDENTIALS account, never to anyone else.
    const issued = token.tokenServer!.requests().filter((r) => r.status === 200);
    assert(issued.length >= 1, "the mirror obtained a token");
    for (const r of issued) {
      assertEquals(r.account, tokenCreds.username);
      assertEquals(r.scopes, ["repository:team/app:pull"]);
    }
    for (const r of token.requests()) assertMatch(r.userAgent, MIRROR_USER_AGENT);
    const logs = mirror.logs();
    for (const secret of [basicCreds.password, tokenCreds.password]) {
      assert(!logs.includes(secret), "the mirror never logs upstream passwords");
    }
  });

  await t.step(
    "docker.io is the default namespace: single-segment names get library/",
    async () => {
      reset();
      const image = images.get("docker.io:ctd")!;
      const headers = new Headers({ "user-agent": DOCKERD_USER_AGENT });
      // Newer dockerd (24) reads the API version header of the ping; the real dockerd in
      // dockerd_test.ts is 20.10.
      const ping = await mirror.fetch("/v2/", { headers });
      await ping.body?.cancel();
      assertEquals(ping.status, 200);
      assertEquals(ping.headers.get("docker-distribution-api-version"), "registry/2.0");
      for (const type of DOCKERD_MANIFEST_ACCEPT) headers.append("accept", type);
      for (const path of ["/v2/hello/manifests/ctd", "/v2/library/hello/manifests/ctd"]) {
        const response = await mirror.fetch(path, { headers });
        assertEquals(response.status, 200, path);
        assertEquals(response.headers.get("docker-content-digest"), image.digest, path);
        assertEquals(new Uint8Array(await response.arrayBuffer()), image.manifest.bytes, path);
      }
      // Cached by the containerd pull above (docker.io/library/hello by ns): no upstream request.
      hub.clearLog();
      assertEquals(await hub.count(), 0);
      const config = await mirror.fetch(`/v2/hello/blobs/${image.config.digest}`, { headers });
      assertEquals(new Uint8Array(await config.arrayBuffer()), image.config.bytes);

      // ctr does not normalize names: it sends the single segment, with ns=docker.io.
      await containerd.pull("docker.io/hello:ctd", { hostsToml: hostsToml(mirror.host) });
      assertEquals((await containerdImages(containerd)).get("docker.io/hello:ctd"), image.digest);
      const requests = await mirrorRequests(mirror);
      assertAllServed(requests);
      assert(
        requests.some((r) =>
          r.method === "HEAD" && r.path === "/v2/hello/manifests/ctd?ns=docker.io"
        ),
        show(requests),
      );
      assertEquals(await hub.count(), 0, "docker.io/hello is docker.io/library/hello, cached");
    },
  );
});

Deno.test("clients: README.md shows exactly the client configuration these tests use", async () => {
  const docs = await Deno.readTextFile(new URL("../../README.md", import.meta.url));
  const mirror = "oci-registry.internal:8080";
  const blocks = [...docs.matchAll(/```(\w*)\n([\s\S]*?)```/g)].map((m) => m[2]);
  const shows = (text: string, what: string) =>
    assert(blocks.includes(text), `README.md should show ${what} as a block:\n${text}`);
  shows(daemonJson(mirror) + "\n", "Docker's daemon.json");
  shows(hostsToml(mirror), "containerd's plain hosts.toml");
  shows(hostsToml(mirror, "ghcr.io"), "containerd's override_path hosts.toml");
  // The [[registry]] tables (without the file's unqualified-search-registries line).
  const conf = mirroredRegistriesConf(mirror, ["docker.io", "ghcr.io", "registry.k8s.io"]);
  shows(
    conf.replace(/^unqualified-search-registries = \[\]\n\n/, "").trimEnd() + "\n",
    "registries.conf",
  );
});
