/**
 * --max-cache-size against a real mirror process, a real docker-registry upstream and real
 * pulls (skopeo), on filesystem and on S3 (s3rver): the cache shrinks below its bound, the
 * least recently pulled image goes, a blob a kept image shares stays, an evicted image comes
 * back byte-exact from upstream, and readers of a blob picked for eviction all finish.
 */
import { createHash } from "node:crypto";
import { assert, assertEquals } from "../support/assert.ts";
import {
  buildImage,
  type Image,
  type Layer,
  makeBlob,
  pushImage,
  skopeoPullDir,
} from "../support/images.ts";
import { type Mirror, startMirror } from "../support/mirror.ts";
import { scrape } from "../support/prometheus.ts";
import { s3MirrorArgs, startS3rver } from "../support/s3rver.ts";
import { startUpstream } from "../support/upstream.ts";
import { RegistryClient } from "../support/registry_client.ts";
import { delay, pathExists, sha256File, tempDir } from "../support/tools.ts";

const NS = "registry.test";
const MiB = 1 << 20;
const BOUND = 12 * MiB;
const GRACE_MS = 1000;

/** `image` with `extra` appended to its layers (config and manifest rebuilt to match). */
function withLayer(image: Image, extra: Layer): Image {
  const config = JSON.parse(new TextDecoder().decode(image.config.bytes));
  config.rootfs.diff_ids.push(extra.diffId);
  config.history.push({ created: "2024-01-01T00:00:00Z", created_by: "shared layer" });
  const configBlob = makeBlob(
    image.config.mediaType,
    new TextEncoder().encode(JSON.stringify(config)),
  );
  const layers = [...image.layers, extra];
  const descriptor = (b: { mediaType: string; digest: string; size: number }) => ({
    mediaType: b.mediaType,
    digest: b.digest,
    size: b.size,
  });
  const manifestJson = {
    ...image.manifestJson,
    config: descriptor(configBlob),
    layers: layers.map(descriptor),
  };
  const manifest = makeBlob(
    image.mediaType,
    new TextEncoder().encode(JSON.stringify(manifestJson)),
  );
  return { ...image, config: configBlob, layers, manifest, manifestJson, digest: manifest.digest };
}

async function pull(mirror: Mirror, repo: string, image: Image): Promise<void> {
  await using dest = await tempDir();
  await skopeoPullDir({ host: mirror.host }, `${NS}/${repo}`, "1", dest.join("image"));
  for (const blob of [image.config, ...image.layers]) {
    assertEquals(await sha256File(dest.join("image", blob.sha256)), blob.sha256);
  }
}

const BACKENDS = {
  filesystem: () => Promise.resolve({ args: undefined, stop: () => Promise.resolve() }),
  s3: async () => {
    const s3 = await startS3rver("bounded-cache");
    return { args: s3MirrorArgs(s3), stop: () => s3.stop() };
  },
};

for (const [kind, makeBackend] of Object.entries(BACKENDS)) {
  Deno.test(`--max-cache-size: LRU images go, shared blobs and readers are safe [${kind}]`, async () => {
    const backend = await makeBackend();
    try {
      await using up = await startUpstream();
      await using mirror = await startMirror({
        upstreams: [{ namespace: NS, host: up.host, tls: false }],
        extraArgs: ["--max-cache-size", String(BOUND), "--eviction-grace", `${GRACE_MS}ms`],
        storageArgs: backend.args,
      });
      // A = a1 (4 MiB) + shared (3 MiB); C = c1 (1 MiB) + shared; B = 2 x 3 MiB. Pulled A, C, B:
      // 14 MiB > 12 MiB; evicting A alone brings it to 10 MiB, under the 90% low watermark.
      const sharedSource = buildImage({ layers: [{ size: 3 * MiB, gzip: false }] });
      const shared = sharedSource.layers[0];
      const a = withLayer(buildImage({ layers: [{ size: 4 * MiB, gzip: false }] }), shared);
      const c = withLayer(buildImage({ layers: [{ size: 1 * MiB, gzip: false }] }), shared);
      const b = buildImage({ layers: 2, layerSize: 3 * MiB, gzip: false });
      for (const [repo, image] of [["a", a], ["b", b], ["c", c]] as const) {
        await pushImage(up, repo, "1", image);
      }
      for (const [repo, image] of [["a", a], ["c", c], ["b", b]] as const) {
        await pull(mirror, repo, image);
        await delay(GRACE_MS + 200); // the previous pull is out of its grace period
      }
      const afterFirst = await scrape(mirror);
      const size = afterFirst.value("oci_registry_cache_size_bytes");
      assert(size < BOUND, `cache is ${size} bytes, bound ${BOUND}`);
      assert(size > 9 * MiB, `cache is ${size} bytes: more than A was evicted`);
      assertEquals(afterFirst.value("oci_registry_cache_evictions_total"), 1);
      assertEquals(afterFirst.value("oci_registry_cache_max_size_bytes"), BOUND);
      if (mirror.root) {
        const blobPath = (l: { sha256: string }) =>
          `${mirror.root}/blobs/sha256/${l.sha256.slice(0, 2)}/${l.sha256}`;
        assert(!await pathExists(blobPath(a.layers[0])), "A's own layer is still stored");
        assert(await pathExists(blobPath(shared)), "the shared layer was evicted");
      }

      // B (most recent) and C (it shares A's layer) come whole from the cache: no upstream GET.
      up.clearLog();
      await pull(mirror, "c", c);
      await pull(mirror, "b", b);
      for (const blob of [...b.layers, b.config, ...c.layers, c.config]) {
        assertEquals(await up.countBlobGets(blob.digest), 0, `${blob.digest} fetched again`);
      }
      await delay(GRACE_MS + 200);

      // Eight readers hold C's own layer (C is now the least recently used image) while A comes
      // back: C is picked first but kept whole for its readers, B goes instead.
      const readers = await Promise.all(Array.from({ length: 8 }, async () => {
        const response = await mirror.fetch(`/v2/${NS}/c/blobs/${c.layers[0].digest}`);
        assertEquals(response.status, 200);
        const reader = response.body!.getReader();
        const first = await reader.read();
        return { reader, first: first.value! };
      }));
      up.clearLog();
      await pull(mirror, "a", a);
      await mirror.waitForLog(new RegExp(`evicted manifests/sha256/../${b.digest.slice(7)}`));
      const digests = await Promise.all(readers.map(async ({ reader, first }) => {
        const hash = createHash("sha256").update(first);
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          hash.update(value);
        }
        return `sha256:${hash.digest("hex")}`;
      }));
      assertEquals(digests, Array(8).fill(c.layers[0].digest));
      // A was fetched again, byte-exact (checked by pull), except the layer C kept.
      assertEquals(await up.countBlobGets(a.layers[0].digest), 1);
      assertEquals(await up.countBlobGets(a.config.digest), 1);
      assertEquals(await up.countBlobGets(shared.digest), 0);
      const last = await scrape(mirror);
      assertEquals(last.value("oci_registry_cache_evictions_total"), 2);
      assert(last.value("oci_registry_cache_size_bytes") < BOUND);
      assert(last.value("oci_registry_cache_evicted_bytes_total") > 10 * MiB);

      // A restart indexes the store again: same size, and C (never evicted) still served.
      await mirror.restart();
      const restarted = await scrape(mirror);
      assertEquals(
        restarted.value("oci_registry_cache_size_bytes"),
        last.value("oci_registry_cache_size_bytes"),
      );
      up.clearLog();
      await pull(mirror, "c", c);
      assertEquals(await up.countBlobGets(shared.digest), 0);
    } finally {
      await backend.stop();
    }
  });
}

Deno.test("--max-cache-size: hosted repositories are neither counted nor evicted, shared layers included", async () => {
  await using up = await startUpstream();
  await using mirror = await startMirror({
    upstreams: [{ namespace: NS, host: up.host, tls: false }],
    extraArgs: [
      "--hosted",
      "myorg",
      "--allow-anonymous-push",
      "--max-cache-size",
      String(4 * MiB),
      "--eviction-grace",
      "0s",
    ],
  });
  // A hosted image whose only layer is also a layer of the mirrored image `old`.
  const hosted = buildImage({ layers: [{ size: 2 * MiB, gzip: false }] });
  await pushImage(new RegistryClient({ url: mirror.url }), "myorg/app", "1", hosted);
  const old = withLayer(buildImage({ layers: [{ size: 1 * MiB, gzip: false }] }), hosted.layers[0]);
  const young = buildImage({ layers: [{ size: 2 * MiB, gzip: false }] });
  await pushImage(up, "old", "1", old);
  await pushImage(up, "young", "1", young);
  await pull(mirror, "old", old);
  const filled = (await scrape(mirror)).value("oci_registry_cache_size_bytes");
  // Counted: old's own layer and the shared one it pulled through (not the hosted push itself).
  assert(filled > 3 * MiB && filled < 3.1 * MiB, `${filled}`);
  await delay(100);
  await pull(mirror, "young", young); // 5 MiB > 4 MiB: old goes
  await mirror.waitForLog(new RegExp(`evicted manifests/sha256/../${old.digest.slice(7)}`));
  const path = (blob: { sha256: string }) =>
    `${mirror.root}/blobs/sha256/${blob.sha256.slice(0, 2)}/${blob.sha256}`;
  assert(!await pathExists(path(old.layers[0])), "old's own layer is still stored");
  assert(await pathExists(path(hosted.layers[0])), "the layer the hosted image shares is gone");
  // The hosted image still pulls whole from the mirror, with upstream never asked.
  up.clearLog();
  await using dest = await tempDir();
  await skopeoPullDir({ host: mirror.host }, "myorg/app", "1", dest.join("hosted"));
  for (const blob of [hosted.config, ...hosted.layers]) {
    assertEquals(await sha256File(dest.join("hosted", blob.sha256)), blob.sha256);
  }
  assertEquals(await up.count(), 0);
  assert((await scrape(mirror)).value("oci_registry_cache_size_bytes") < 4 * MiB);
});
