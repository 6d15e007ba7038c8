/**
 * Warm lists against a real upstream (Debian's docker-registry): images named in the upstream
 * file are cached before any client asks, and `oci-registry warm IMAGE...` caches images
 * through a running mirror. Proven by stopping the upstream and pulling from the mirror.
 */
import { assertEquals, assertMatch } from "../support/assert.ts";
import { buildImage, buildIndex, MediaTypes, pushImage } from "../support/images.ts";
import { startMirror } from "../support/mirror.ts";
import { startUpstream } from "../support/upstream.ts";
import { REPO_ROOT } from "../support/tools.ts";

const NS = "registry.test";
const accept = [MediaTypes.ociManifest, MediaTypes.ociIndex].join(", ");

Deno.test("warm list: an image in the upstream file is cached at start, before any client asks", async () => {
  await using upstream = await startUpstream();
  const image = buildImage({ layers: 2, layerSize: 50_000 });
  await pushImage(upstream, "library/app", "v1", image);
  await using mirror = await startMirror({
    upstreamConfigYaml: [
      `- namespace: ${NS}`,
      `  host: "${upstream.host}"`,
      "  tls: false",
      "  warm: [library/app:v1]",
    ].join("\n"),
  });
  const line = await mirror.waitForLog(/warm: registry\.test\/library\/app:v1: /, 15_000);
  assertMatch(line, /1 manifest\(s\), 3 blob\(s\)/);
  await upstream.stop();
  const manifest = await mirror.fetch(`/v2/${NS}/library/app/manifests/v1`, {
    headers: { accept },
  });
  assertEquals(manifest.status, 200);
  assertEquals(manifest.headers.get("docker-content-digest"), image.digest);
  await manifest.body?.cancel();
  for (const layer of image.layers) {
    const blob = await mirror.fetch(`/v2/${NS}/library/app/blobs/${layer.digest}`);
    assertEquals(new Uint8Array(await blob.arrayBuffer()), layer.bytes);
  }
});

Deno.test("oci-registry warm: images pulled through a running mirror, a line each, chosen platforms", async () => {
  await using upstream = await startUpstream();
  const index = buildIndex({ layers: 1, layerSize: 10_000 }); // linux/amd64 and linux/arm64
  const [amd64, arm64] = index.images;
  await pushImage(upstream, "library/multi", "1", index);
  await using mirror = await startMirror({
    upstreams: [{ namespace: NS, host: upstream.host, tls: false }],
  });
  const run = async (...args: string[]) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "src/main.ts", "warm", "--mirror", mirror.url, ...args],
      cwd: REPO_ROOT,
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    return {
      code: out.code,
      text: new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr),
    };
  };
  const warmed = await run(
    "--platform",
    "linux/arm64",
    `${NS}/library/multi:1`,
    `${NS}/library/missing:1`,
  );
  assertEquals(warmed.code, 1, warmed.text);
  assertMatch(warmed.text, /registry\.test\/library\/multi:1: ok, 2 manifest\(s\), 2 blob\(s\)/);
  assertMatch(warmed.text, /registry\.test\/library\/missing:1: failed: /);
  assertMatch(warmed.text, /warmed 1 of 2 image\(s\)/);
  await upstream.sync();
  const layerGets = (digest: string) =>
    upstream.requests().filter((r) => r.method === "GET" && r.path.endsWith(digest)).length;
  assertEquals(layerGets(arm64.layers[0].digest), 1, "the chosen platform was fetched");
  assertEquals(layerGets(amd64.layers[0].digest), 0, "the other one was not");
  await upstream.stop();
  // A pull of the chosen platform with the upstream gone: index, manifest, config and layer.
  const pulled = await mirror.fetch(`/v2/${NS}/library/multi/manifests/1`, { headers: { accept } });
  assertEquals(pulled.headers.get("docker-content-digest"), index.digest);
  await pulled.body?.cancel();
  const platform = await mirror.fetch(`/v2/${NS}/library/multi/manifests/${arm64.digest}`, {
    headers: { accept },
  });
  assertEquals(platform.status, 200);
  await platform.body?.cancel();
  for (const blob of [arm64.config, ...arm64.layers]) {
    const response = await mirror.fetch(`/v2/${NS}/library/multi/blobs/${blob.digest}`);
    assertEquals(new Uint8Array(await response.arrayBuffer()), blob.bytes, "served from cache");
  }
});

Deno.test("warm list: the periodic refresh picks up a re-pushed tag", async () => {
  await using upstream = await startUpstream();
  const before = buildImage({ layers: 1, layerSize: 1000 });
  await pushImage(upstream, "library/app", "stable", before);
  await using mirror = await startMirror({
    upstreamConfigYaml: [
      `- namespace: ${NS}`,
      `  host: "${upstream.host}"`,
      "  tls: false",
      "  warm: [library/app:stable]",
      "  warm_interval: 1s", // manifest_invalidation_time stays 1h: the refresh asks anyway
    ].join("\n"),
  });
  await mirror.waitForLog(/warm: registry\.test\/library\/app:stable: /, 15_000);
  const after = buildImage({ layers: 1, layerSize: 1000 });
  await pushImage(upstream, "library/app", "stable", after);
  mirror.clearLogs();
  await mirror.waitForLog(
    /warm: registry\.test\/library\/app:stable: 1 manifest\(s\), 2 blob\(s\), 0\.0 MB/,
    15_000,
  );
  await upstream.stop();
  const manifest = await mirror.fetch(`/v2/${NS}/library/app/manifests/stable`, {
    headers: { accept },
  });
  assertEquals(manifest.headers.get("docker-content-digest"), after.digest, "the re-pushed image");
  await manifest.body?.cancel();
  const layer = await mirror.fetch(`/v2/${NS}/library/app/blobs/${after.layers[0].digest}`);
  assertEquals(new Uint8Array(await layer.arrayBuffer()), after.layers[0].bytes);
});
