/**
 * Failover between two real upstream registries (Debian's docker-registry) for one namespace:
 * the first stops mid-test, pulls keep succeeding from the second, and the first is used
 * again once it is back and its backoff has ended.
 */
import { assert, assertEquals } from "../support/assert.ts";
import { buildImage, MediaTypes, pushImage } from "../support/images.ts";
import { startMirror } from "../support/mirror.ts";
import { startUpstream } from "../support/upstream.ts";
import { delay } from "../support/tools.ts";

const NS = "registry.test";
const accept = { accept: [MediaTypes.ociManifest, MediaTypes.ociIndex].join(", ") };

Deno.test("failover: the second endpoint serves while the first is down; the first is back after its backoff", async () => {
  await using first = await startUpstream();
  await using second = await startUpstream();
  const images = [
    buildImage({ layers: 1, layerSize: 256 }),
    buildImage({ layers: 1, layerSize: 256 }),
  ];
  for (const upstream of [first, second]) {
    for (const [i, image] of images.entries()) {
      await pushImage(upstream, "library/app", `v${i}`, image);
    }
  }
  await using mirror = await startMirror({
    upstreamConfigYaml: [
      `- namespace: ${NS}`,
      "  tls: false",
      `  hosts: ["${first.host}", "${second.host}"]`,
      "  failover_backoff: 2s",
      "  manifest_invalidation_time: 0s # every tag request asks upstream",
    ].join("\n"),
  });
  const pull = async (tag: string) => {
    const response = await mirror.fetch(`/v2/${NS}/library/app/manifests/${tag}`, {
      headers: accept,
    });
    const digest = response.headers.get("docker-content-digest");
    await response.body?.cancel();
    return { status: response.status, digest };
  };
  const asked = async (upstream: typeof first) =>
    await upstream.countManifestGets() + await upstream.countManifestHeads();
  const counts = async () => [await asked(first), await asked(second)];
  first.clearLog();
  second.clearLog();

  assertEquals(await pull("v0"), { status: 200, digest: images[0].digest });
  assertEquals(
    await counts(),
    [1, 0],
    "the first endpoint is preferred",
  );

  await first.stop();
  assertEquals(
    await pull("v0"),
    { status: 200, digest: images[0].digest },
    "revalidated on the second",
  );
  assertEquals(
    await pull("v1"),
    { status: 200, digest: images[1].digest },
    "a cold tag from the second",
  );
  const [, fromSecond] = await counts();
  assert(fromSecond >= 2, `the second endpoint served ${fromSecond} manifest requests`);
  const metrics = await (await mirror.fetch("/metrics")).text();
  assert(
    metrics.includes(
      `oci_registry_upstream_endpoint_up{namespace="${NS}",endpoint="${first.host}"} 0`,
    ),
    metrics.split("\n").filter((l) => l.includes("endpoint_up")).join("\n"),
  );
  assert(/endpoint 127\.0\.0\.1:\d+ failing/.test(mirror.logs()), "the failover is logged");

  await first.start();
  await delay(2200); // its backoff ends
  first.clearLog();
  assertEquals(await pull("v1"), { status: 200, digest: images[1].digest });
  assertEquals(await asked(first), 1, "back on the first endpoint");
  assert(/endpoint 127\.0\.0\.1:\d+ answers again/.test(mirror.logs()));
});
