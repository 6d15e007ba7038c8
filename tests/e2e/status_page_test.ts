/**
 * The status page at GET /, rendered by a real headless browser (Debian's chromium) against a
 * real mirror process filled from a real docker-registry: its figures (cache fill, repository
 * sizes, hit rate, upstream health, recent warnings) must be the mirror's own, and probes still
 * get a plain "ok". The screenshot is kept in .tmp/status-page.png as a test artefact.
 */
import { assert, assertEquals, assertMatch } from "../support/assert.ts";
import { buildImage, pushImage, skopeoPullDir } from "../support/images.ts";
import { startMirror } from "../support/mirror.ts";
import { scrape } from "../support/prometheus.ts";
import { startUpstream } from "../support/upstream.ts";
import { delay, REPO_ROOT, run, tempDir } from "../support/tools.ts";

const NS = "registry.test";
const CHROMIUM = "/usr/bin/chromium";

async function chromium(profile: string, ...args: string[]) {
  return await run(CHROMIUM, [
    "--headless",
    "--no-sandbox", // tests run as root
    "--disable-gpu",
    "--no-first-run",
    `--user-data-dir=${profile}`,
    ...args,
  ], { check: true, timeoutMs: 60_000 });
}

Deno.test("status page: a real browser shows the mirror's own figures; probes get ok", async () => {
  await using up = await startUpstream();
  await using mirror = await startMirror({
    upstreams: [{ namespace: NS, host: up.host, tls: false, manifest_invalidation_time: "1s" }],
    extraArgs: ["--max-cache-size", "10MiB"],
  });
  const app = await pushImage(
    up,
    "library/app",
    "1",
    buildImage({ layers: 2, layerSize: 64 << 10 }),
  );
  const tool = await pushImage(
    up,
    "tools/tool",
    "1",
    buildImage({ layers: 1, layerSize: 16 << 10 }),
  );
  await using dest = await tempDir();
  await skopeoPullDir({ host: mirror.host }, `${NS}/library/app`, "1", dest.join("app"));
  await skopeoPullDir({ host: mirror.host }, `${NS}/tools/tool`, "1", dest.join("tool"));
  await skopeoPullDir({ host: mirror.host }, `${NS}/library/app`, "1", dest.join("again"));
  // A stale serve: a warning for the page's recent list.
  await delay(1100);
  await up.stop();
  const stale = await mirror.fetch(`/v2/${NS}/tools/tool/manifests/1`, {
    headers: { accept: tool.mediaType },
  });
  await stale.arrayBuffer();
  assertEquals(stale.status, 200);

  const probe = await mirror.fetch("/");
  assertEquals([probe.status, await probe.text()], [200, "ok\n"]);
  const metrics = await scrape(mirror);

  await Deno.mkdir(`${REPO_ROOT}/.tmp`, { recursive: true });
  const screenshot = `${REPO_ROOT}/.tmp/status-page.png`;
  await Deno.remove(screenshot).catch(() => {});
  const dom = (await chromium(dest.join("profile"), "--dump-dom", `${mirror.url}/`)).stdout;
  await chromium(
    dest.join("profile"),
    `--screenshot=${screenshot}`,
    "--window-size=1200,1400",
    `${mirror.url}/`,
  );
  const png = await Deno.readFile(screenshot);
  assertEquals([...png.subarray(1, 4)], [0x50, 0x4e, 0x47]); // "PNG"
  assert(png.byteLength > 10_000, `screenshot of ${png.byteLength} bytes`);

  // Cache fill: the index's figures, as /metrics has them.
  const fill = /id="cache-fill" data-bytes="(\d+)" data-max="(\d+)"/.exec(dom);
  assert(fill, dom);
  assertEquals(Number(fill[1]), metrics.value("oci_registry_cache_size_bytes"));
  assertEquals(Number(fill[2]), 10 << 20);
  // Each repository's size is its image: manifest, config and layers.
  const size = (image: typeof app) =>
    image.manifest.size + image.config.size + image.layers.reduce((sum, l) => sum + l.size, 0);
  for (const [repository, image] of [["library/app", app], ["tools/tool", tool]] as const) {
    const row = new RegExp(
      `<td>${NS}</td><td>${repository}</td><td class="n">1</td><td class="n" data-bytes="(\\d+)">`,
    ).exec(dom);
    assert(row, `${repository} not listed`);
    assertEquals(Number(row[1]), size(image));
  }
  assertEquals(Number(fill[1]), size(app) + size(tool));
  // Hit rate: hits and revalidations over every lookup, as counted in /metrics.
  const lookups = metrics.sum("oci_registry_cache_requests_total");
  const hits = metrics.sum("oci_registry_cache_requests_total", { result: "hit" }) +
    metrics.sum("oci_registry_cache_requests_total", { result: "revalidated" });
  assert(hits > 0 && lookups > hits, `${hits} of ${lookups}`);
  assertMatch(
    dom,
    new RegExp(
      `id="hit-rate">${(hits / lookups * 100).toFixed(1)}%</strong> of ${lookups} lookups`,
    ),
  );
  // The upstream row shows its requests and the failed revalidation.
  const upstreamRow = new RegExp(`<td>${NS}</td><td class="n">(\\d+)</td><td class="n">(\\d+)</td>`)
    .exec(dom);
  assert(upstreamRow, "no upstream row");
  assertEquals(Number(upstreamRow[1]), metrics.sum("oci_registry_upstream_requests_total"));
  assert(Number(upstreamRow[2]) >= 1, "the failed revalidation is not counted");
  assertMatch(dom, /<li class="warn">[^<]*warn: serving stale registry\.test\/tools\/tool:1/);
  assert(!/<script/i.test(dom), "the page has a script");
});
