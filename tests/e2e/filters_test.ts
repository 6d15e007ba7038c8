/**
 * What a mirror is willing to fetch, against a real upstream (Debian's docker-registry):
 * repository and tag filters per namespace, and `--upstream-policy configured`. A refused
 * request is answered without asking upstream, and cached content outside the filters is
 * refused too.
 */
import { assertEquals, assertMatch } from "../support/assert.ts";
import { buildImage, MediaTypes, pushImage } from "../support/images.ts";
import { startMirror } from "../support/mirror.ts";
import { startUpstream } from "../support/upstream.ts";

const NS = "registry.test";
const accept = { accept: [MediaTypes.ociManifest, MediaTypes.ociIndex].join(", ") };

Deno.test("filters: only allowed repositories and tags are fetched; the rest is 404 (or 403) without asking upstream", async () => {
  await using upstream = await startUpstream();
  for (
    const [repo, tag] of [["library/alpine", "3.19"], ["library/alpine", "3.20-rc1"], [
      "library/ubuntu",
      "24.04",
    ], ["private/tool", "1"]]
  ) {
    await pushImage(upstream, repo, tag, buildImage({ layers: 1, layerSize: 64 }));
  }
  await using mirror = await startMirror({
    upstreams: [{
      namespace: NS,
      host: upstream.host,
      tls: false,
      repositories: ["library/*"],
      exclude_repositories: ["library/ubuntu"],
      exclude_tags: ["*-rc*"],
    }, {
      namespace: "strict.test",
      host: upstream.host,
      tls: false,
      exclude_repositories: ["private/**"],
      refusal_status: 403,
    }],
  });
  const get = async (path: string) => {
    const response = await mirror.fetch(path, { headers: accept });
    const body = await response.text();
    return {
      status: response.status,
      code: response.ok ? undefined : JSON.parse(body).errors[0].code,
    };
  };
  assertEquals(await get(`/v2/${NS}/library/alpine/manifests/3.19`), {
    status: 200,
    code: undefined,
  });
  await upstream.sync();
  const asked = upstream.requests().length;
  assertEquals(await get(`/v2/${NS}/library/alpine/manifests/3.20-rc1`), {
    status: 404,
    code: "NAME_UNKNOWN",
  });
  assertEquals(await get(`/v2/${NS}/library/ubuntu/manifests/24.04`), {
    status: 404,
    code: "NAME_UNKNOWN",
  });
  assertEquals(await get(`/v2/${NS}/private/tool/manifests/1`), {
    status: 404,
    code: "NAME_UNKNOWN",
  });
  assertEquals(await get(`/v2/${NS}/private/tool/tags/list`), {
    status: 404,
    code: "NAME_UNKNOWN",
  });
  assertEquals(await get(`/v2/strict.test/private/tool/manifests/1`), {
    status: 403,
    code: "DENIED",
  });
  await upstream.sync();
  assertEquals(upstream.requests().length, asked, "refused requests never reach upstream");
  assertEquals(await get(`/v2/strict.test/library/ubuntu/manifests/24.04`), {
    status: 200,
    code: undefined,
  });
  // Content cached under an allowed name is not served under an excluded one either.
  assertEquals(await get(`/v2/${NS}/library/ubuntu/manifests/24.04`), {
    status: 404,
    code: "NAME_UNKNOWN",
  });
});

Deno.test("--upstream-policy configured: a registry that is not in the upstream file is not mirrored", async () => {
  await using upstream = await startUpstream();
  await pushImage(upstream, "library/alpine", "1", buildImage({ layers: 1, layerSize: 64 }));
  await using mirror = await startMirror({
    upstreams: [{ namespace: NS, host: upstream.host, tls: false }],
    extraArgs: ["--upstream-policy", "configured"],
  });
  const ok = await mirror.fetch(`/v2/${NS}/library/alpine/manifests/1`, { headers: accept });
  assertEquals(ok.status, 200);
  await ok.body?.cancel();
  for (
    const path of [
      "/v2/quay.io/some/app/manifests/1",
      "/v2/library/alpine/manifests/1?ns=ghcr.io",
      "/v2/library/alpine/manifests/1",
    ]
  ) {
    const refused = await mirror.fetch(path, { headers: accept });
    assertEquals(refused.status, 404, path);
    assertMatch(
      JSON.parse(await refused.text()).errors[0].message,
      /not a registry this mirror is configured for/,
    );
  }
});
