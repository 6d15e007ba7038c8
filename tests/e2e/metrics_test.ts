/**
 * /metrics through a scripted sequence against a real mirror process and a real docker-registry:
 * a miss, hits, a stale serve, an upstream error, an eviction and periodic GC, each read back
 * with a Prometheus text-format parser (tests/support/prometheus.ts), never by string matching.
 */
import { assert, assertEquals } from "../support/assert.ts";
import { buildImage, pushImage } from "../support/images.ts";
import { startMirror } from "../support/mirror.ts";
import { type Scrape, scrape } from "../support/prometheus.ts";
import { startUpstream } from "../support/upstream.ts";
import { delay, waitFor } from "../support/tools.ts";

const NS = "registry.test";
const ACCEPT = "application/vnd.oci.image.manifest.v1+json";

Deno.test("metrics move as scripted: miss, hit, stale, upstream error, eviction, gc", async () => {
  await using up = await startUpstream();
  await using mirror = await startMirror({
    upstreams: [{
      namespace: NS,
      host: up.host,
      tls: false,
      manifest_invalidation_time: "1s",
      blob_invalidation_time: "1s",
    }],
    extraArgs: ["--max-cache-size", "1MiB", "--eviction-grace", "0s", "--gc-interval", "1s"],
  });
  const a = await pushImage(
    up,
    "a",
    "1",
    buildImage({ layers: 2, layerSize: 300 << 10, gzip: false }),
  );
  const b = await pushImage(
    up,
    "b",
    "1",
    buildImage({ layers: 1, layerSize: 600 << 10, gzip: false }),
  );
  const get = async (path: string) => {
    const response = await mirror.fetch(`/v2/${NS}/${path}`, { headers: { accept: ACCEPT } });
    await response.arrayBuffer();
    return response.status;
  };
  const cache = (s: Scrape, kind: string, result: string) =>
    s.value("oci_registry_cache_requests_total", { kind, result });
  const upstreamGets = (s: Scrape, kind: string) =>
    s.value("oci_registry_upstream_requests_total", { namespace: NS, kind, method: "GET" });
  const before = await scrape(mirror);
  assertEquals(before.types.get("oci_registry_cache_requests_total"), "counter");
  assertEquals(before.types.get("oci_registry_cache_size_bytes"), "gauge");
  assertEquals(before.value("oci_registry_cache_size_bytes"), 0);

  // A miss: the tag and a layer come from upstream.
  assertEquals(await get("a/manifests/1"), 200);
  assertEquals(await get(`a/blobs/${a.layers[0].digest}`), 200);
  // The response ends as the download is verified; it is stored (indexed) a moment later.
  const missed = await waitFor(async () => {
    const s = await scrape(mirror);
    return s.value("oci_registry_cache_entries") === 2 ? s : undefined;
  });
  assertEquals(cache(missed, "manifest", "miss"), 1);
  assertEquals(cache(missed, "blob", "miss"), 1);
  assertEquals(upstreamGets(missed, "manifest"), 1);
  assertEquals(upstreamGets(missed, "blob"), 1);
  assertEquals(
    missed.value("oci_registry_http_requests_total", {
      method: "GET",
      endpoint: "blobs",
      status: "200",
    }),
    1,
  );

  // Hits: by digest and the same layer again; upstream is not asked.
  for (const blob of [a.layers[0], a.layers[1], a.config]) {
    assertEquals(await get(`a/blobs/${blob.digest}`), 200);
  }
  assertEquals(await get(`a/manifests/${a.digest}`), 200);
  const hit = await waitFor(async () => {
    const s = await scrape(mirror);
    return s.value("oci_registry_cache_entries") === 4 ? s : undefined; // both misses stored
  });
  assertEquals(cache(hit, "manifest", "hit"), 1);
  assertEquals(cache(hit, "blob", "hit"), 1);
  assertEquals(cache(hit, "blob", "miss"), 3);
  assertEquals(upstreamGets(hit, "manifest"), 1);
  const filled = hit.value("oci_registry_cache_size_bytes");
  assert(filled > 600 << 10 && filled < 700 << 10, `${filled}`);
  assertEquals(hit.value("oci_registry_cache_entries"), 4); // manifest, config, two layers

  // blob_invalidation_time still applies under the bound: an old blob is confirmed upstream.
  await delay(1100);
  assertEquals(await get(`a/blobs/${a.layers[1].digest}`), 200);
  const confirmed = await scrape(mirror);
  assertEquals(
    confirmed.value("oci_registry_upstream_requests_total", {
      namespace: NS,
      kind: "blob",
      method: "HEAD",
    }),
    1,
  );
  assertEquals(cache(confirmed, "blob", "hit"), 2);

  // A stale serve: the tag is past manifest_invalidation_time and upstream is down.
  await up.stop();
  assertEquals(await get("a/manifests/1"), 200);
  const stale = await scrape(mirror);
  assertEquals(cache(stale, "manifest", "stale"), 1);
  const unavailable = { namespace: NS, kind: "manifest", code: "UNAVAILABLE" };
  assertEquals(stale.value("oci_registry_upstream_errors_total", unavailable), 1);

  // An upstream error: nothing cached for this tag, so the client gets 503.
  assertEquals(await get("b/manifests/1"), 503);
  const failed = await scrape(mirror);
  assertEquals(failed.value("oci_registry_upstream_errors_total", unavailable), 2);
  assertEquals(
    failed.value("oci_registry_http_requests_total", {
      method: "GET",
      endpoint: "manifests",
      status: "503",
    }),
    1,
  );
  assertEquals(failed.value("oci_registry_cache_evictions_total"), 0);

  // An eviction: B (600 KiB) on top of A (600 KiB) passes the 1 MiB bound; A goes.
  await up.start();
  assertEquals(await get("b/manifests/1"), 200);
  assertEquals(await get(`b/blobs/${b.layers[0].digest}`), 200);
  assertEquals(await get(`b/blobs/${b.config.digest}`), 200);
  const evicted = await waitFor(async () => {
    const s = await scrape(mirror);
    // Evicted, and B's config (the last blob) stored too.
    const done = s.value("oci_registry_cache_evictions_total") === 1 &&
      s.value("oci_registry_cache_entries") === 3;
    return done ? s : undefined;
  }, { timeoutMs: 10_000 });
  const size = evicted.value("oci_registry_cache_size_bytes");
  assert(size < 1 << 20 && size > 600 << 10, `${size}`);
  assertEquals(evicted.value("oci_registry_cache_entries"), 3); // B: manifest, config, layer
  assert(evicted.value("oci_registry_cache_evicted_bytes_total") > 600 << 10);
  assertEquals(evicted.value("oci_registry_cache_max_size_bytes"), 1 << 20);
  // A comes back from upstream: a miss again, not a hit of something gone.
  assertEquals(await get(`a/blobs/${a.layers[0].digest}`), 200);
  const refetched = await scrape(mirror);
  assertEquals(cache(refetched, "blob", "miss"), cache(evicted, "blob", "miss") + 1);

  // Periodic GC runs (nothing to remove: everything is younger than its safety age).
  const collected = await waitFor(async () => {
    const s = await scrape(mirror);
    return s.value("oci_registry_gc_runs_total") >= 1 ? s : undefined;
  }, { timeoutMs: 10_000 });
  assertEquals(collected.value("oci_registry_gc_removed_objects_total"), 0);
  assertEquals(collected.value("oci_registry_gc_failures_total"), 0);
});
