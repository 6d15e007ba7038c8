/**
 * A chain of mirrors: one oci-registry whose upstream is another (say, a mirror per cluster in
 * front of one per site), with `forward_ns` so the second knows which registry is meant. The
 * upstream at the end is a real docker-registry; the client is skopeo.
 */
import { assertEquals } from "../support/assert.ts";
import { buildImage, pushImage, skopeoPullDir } from "../support/images.ts";
import { mirrorRequests } from "../support/mirror_log.ts";
import { startMirror } from "../support/mirror.ts";
import { startUpstream } from "../support/upstream.ts";
import { sha256File, tempDir } from "../support/tools.ts";

const NS = "registry.test";

Deno.test("chain: a mirror in front of a mirror pulls byte-exact, the registry named by ?ns=", async () => {
  await using upstream = await startUpstream();
  const image = buildImage({ layers: 2, layerSize: 40_000 });
  await pushImage(upstream, "team/app", "1", image);
  // The back mirror's default namespace is docker.io: without ?ns= it would look there.
  await using back = await startMirror({
    upstreams: [{ namespace: NS, host: upstream.host, tls: false }],
  });
  await using front = await startMirror({
    upstreams: [{ namespace: NS, host: back.host, tls: false, forward_ns: true }],
  });
  await using dir = await tempDir("oci-chain-");
  back.clearLogs();
  await skopeoPullDir({ host: front.host }, `${NS}/team/app`, "1", dir.join("image"));
  for (const layer of image.layers) {
    assertEquals(await sha256File(dir.join("image", layer.digest.slice(7))), layer.digest.slice(7));
  }
  const asked = await mirrorRequests(back);
  assertEquals(asked.length > 0, true);
  for (const request of asked) {
    assertEquals(new URL(request.path, "http://x").searchParams.get("ns"), NS, request.path);
    assertEquals(request.status, 200, request.path);
  }
  // Cached at the front now: the back mirror is not asked again for the same blobs.
  back.clearLogs();
  await using again = await tempDir("oci-chain-");
  await skopeoPullDir({ host: front.host }, `${NS}/team/app`, "1", again.join("image"));
  const blobs = (await mirrorRequests(back)).filter((r) => r.path.includes("/blobs/"));
  assertEquals(blobs, []);
});
