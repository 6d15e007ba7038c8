/**
 * The core mirror against the real upstream (Debian's docker-registry) and a real client
 * (skopeo): byte-exact pulls, one upstream download for many clients, serving while upstream
 * is down, a lying upstream, kill -9 mid-download, and tag revalidation. Every test runs once
 * per storage back-end: filesystem, and S3 (s3rver speaking the real S3 protocol).
 */
import { createHash } from "node:crypto";
import { assert, assertEquals, assertMatch } from "../support/assert.ts";
import { buildImage, pushImage, pushRandomBlob, skopeoPullDir } from "../support/images.ts";
import { type MirrorOptions, startMirror } from "../support/mirror.ts";
import { s3MirrorArgs, startS3rver } from "../support/s3rver.ts";
import { startUpstream, type Upstream } from "../support/upstream.ts";
import { delay, pathExists, sha256File, tempDir, waitFor } from "../support/tools.ts";

const NS = "registry.test";

/** A storage back-end for the mirror under test: its CLI arguments and a cleanup. */
interface Backend extends AsyncDisposable {
  storageArgs?: string[];
}

const BACKENDS: Record<string, () => Promise<Backend>> = {
  filesystem: () => Promise.resolve({ [Symbol.asyncDispose]: () => Promise.resolve() }),
  s3: async () => {
    const s3 = await startS3rver("mirror-cache");
    return {
      storageArgs: s3MirrorArgs(s3),
      [Symbol.asyncDispose]: () => s3.stop(),
    };
  },
};

/** Registers `fn` once per back-end, each with a fresh back-end. */
function testEachBackend(name: string, fn: (backend: Backend) => Promise<void>) {
  for (const [kind, make] of Object.entries(BACKENDS)) {
    Deno.test(`${name} [${kind}]`, async () => {
      await using backend = await make();
      await fn(backend);
    });
  }
}

function mirrorOn(backend: Backend, options: MirrorOptions) {
  return startMirror({ ...options, storageArgs: backend.storageArgs });
}

function upstreamEntry(up: Upstream, extra: Record<string, unknown> = {}) {
  return {
    namespace: NS,
    host: up.host,
    tls: false,
    username: up.username,
    password: up.password,
    ...extra,
  };
}

/** skopeo pulls through the mirror (prefix style) and every blob must match the original. */
async function pullThroughMirror(
  mirrorHost: string,
  repo: string,
  tag: string,
  image: ReturnType<typeof buildImage>,
) {
  await using dest = await tempDir();
  await skopeoPullDir({ host: mirrorHost }, `${NS}/${repo}`, tag, dest.join("image"));
  for (const blob of [image.config, ...image.layers]) {
    assertEquals(await sha256File(dest.join("image", blob.sha256)), blob.sha256);
  }
  assertEquals(await Deno.readFile(dest.join("image", "manifest.json")), image.manifest.bytes);
}

for (const auth of ["none", "basic", "token"] as const) {
  testEachBackend(
    `skopeo pulls OCI and Docker images through the mirror (${auth} upstream)`,
    async (backend) => {
      await using up = await startUpstream({ auth });
      await using mirror = await mirrorOn(backend, { upstreams: [upstreamEntry(up)] });
      const oci = await pushImage(up, "library/oci", "1", buildImage({ format: "oci" }));
      const docker = await pushImage(up, "library/docker", "1", buildImage({ format: "docker" }));
      up.clearLog();

      await pullThroughMirror(mirror.host, "library/oci", "1", oci);
      await pullThroughMirror(mirror.host, "library/docker", "1", docker);
      for (const blob of [...oci.layers, oci.config, ...docker.layers, docker.config]) {
        assertEquals(await up.countBlobGets(blob.digest), 1, `one upstream GET of ${blob.digest}`);
      }
      if (auth === "token") {
        // Tokens are cached per scope: one per repository, not one per request.
        assert(
          up.tokenServer!.requests().length <= 2,
          `${up.tokenServer!.requests().length} tokens`,
        );
      }

      // Second pull: every blob comes from the cache.
      up.clearLog();
      await pullThroughMirror(mirror.host, "library/oci", "1", oci);
      await pullThroughMirror(mirror.host, "library/docker", "1", docker);
      assertEquals(await up.count({ path: /\/blobs\// }), 0, "no upstream blob request");
    },
  );
}

testEachBackend(
  "20 concurrent cold GETs of a 64 MiB blob: right bytes for all, ONE upstream GET",
  async (backend) => {
    await using up = await startUpstream();
    await using mirror = await mirrorOn(backend, { upstreams: [upstreamEntry(up)] });
    const blob = await pushRandomBlob(up, "library/big", 64 << 20);
    up.clearLog();
    const results = await Promise.all(Array.from({ length: 20 }, async () => {
      const response = await mirror.fetch(`/v2/library/big/blobs/${blob.digest}?ns=${NS}`);
      assertEquals(response.status, 200);
      assertEquals(response.headers.get("content-length"), String(blob.size));
      assertEquals(response.headers.get("docker-content-digest"), blob.digest);
      return await sha256Of(response);
    }));
    for (const sha256 of results) assertEquals(sha256, blob.sha256);
    assertEquals(await up.countBlobGets(blob.digest), 1);
  },
);

testEachBackend(
  "upstream down: cached tag, digest and blob still served; uncached fails fast",
  async (backend) => {
    await using up = await startUpstream();
    await using mirror = await mirrorOn(backend, {
      upstreams: [upstreamEntry(up, { manifest_invalidation_time: "0s" })],
    });
    const image = await pushImage(up, "library/app", "1", buildImage());
    await pullThroughMirror(mirror.host, "library/app", "1", image);
    await up.stop();

    const accept = { accept: image.mediaType };
    for (const method of ["GET", "HEAD"]) {
      const byTag = await mirror.fetch(`/v2/${NS}/library/app/manifests/1`, {
        method,
        headers: accept,
      });
      assertEquals(byTag.status, 200, `${method} of a cached tag`);
      assertEquals(byTag.headers.get("docker-content-digest"), image.digest);
      assertEquals(byTag.headers.get("content-length"), String(image.manifest.size));
      if (method === "GET") {
        assertEquals(new Uint8Array(await byTag.arrayBuffer()), image.manifest.bytes);
      } else await byTag.body?.cancel();
    }
    assertMatch(mirror.logs(), /serving stale registry\.test\/library\/app:1/);
    const byDigest = await mirror.fetch(`/v2/library/app/manifests/${image.digest}?ns=${NS}`);
    assertEquals(new Uint8Array(await byDigest.arrayBuffer()), image.manifest.bytes);
    const layer = image.layers[0];
    const blob = await mirror.fetch(`/v2/library/app/blobs/${layer.digest}?ns=${NS}`);
    assertEquals(new Uint8Array(await blob.arrayBuffer()), layer.bytes);
    // The whole image still pulls with a real client.
    await pullThroughMirror(mirror.host, "library/app", "1", image);

    const started = performance.now();
    const missing = await mirror.fetch(`/v2/library/app/manifests/2?ns=${NS}`);
    assertEquals(missing.status, 503);
    const body = await missing.json();
    assertEquals(body.errors[0].code, "UNAVAILABLE");
    assert(performance.now() - started < 5000, "an unreachable upstream is reported promptly");
  },
);

testEachBackend(
  "a lying upstream: the client's response is cut, nothing is stored, an honest upstream heals it",
  async (backend) => {
    await using up = await startUpstream();
    await using mirror = await mirrorOn(backend, { upstreams: [upstreamEntry(up)] });
    const blob = await pushRandomBlob(up, "library/lie", 4 << 20);
    // Corrupt the upstream's stored copy: distribution serves it without checking.
    const data = `${up.dir}/data/docker/registry/v2/blobs/sha256/${
      blob.sha256.slice(0, 2)
    }/${blob.sha256}/data`;
    const original = await Deno.readFile(data);
    const corrupt = original.slice();
    corrupt[corrupt.length - 10] ^= 0xff;
    await Deno.writeFile(data, corrupt);

    const path = `/v2/library/lie/blobs/${blob.digest}?ns=${NS}`;
    const lied = await mirror.fetch(path);
    assertEquals(lied.status, 200);
    let failed = false;
    try {
      const bytes = new Uint8Array(await lied.arrayBuffer());
      failed = bytes.byteLength !== blob.size; // never the whole (corrupt) blob
    } catch {
      failed = true;
    }
    assert(failed, "the client must not receive a complete body");
    await waitFor(() => /not cached/.test(mirror.logs()));
    // Nothing was stored: with upstream gone, the mirror has nothing to serve.
    await up.stop();
    const gone = await mirror.fetch(path);
    await gone.body?.cancel();
    assertEquals(gone.status, 503, "the corrupt download was not cached");

    await Deno.writeFile(data, original);
    await up.start();
    const healed = await mirror.fetch(path);
    assertEquals(new Uint8Array(await healed.arrayBuffer()), original);
    // Healed for good: served from the cache with upstream gone again.
    await up.stop();
    const cached = await waitFor(async () => {
      const response = await mirror.fetch(path);
      if (response.status === 200) return response;
      await response.body?.cancel();
    });
    assertEquals(new Uint8Array(await cached.arrayBuffer()), original);
  },
);

testEachBackend(
  "a lying upstream and a cold Range request: the client never gets a complete 206",
  async (backend) => {
    await using up = await startUpstream();
    await using mirror = await mirrorOn(backend, { upstreams: [upstreamEntry(up)] });
    const blob = await pushRandomBlob(up, "library/range", 4 << 20);
    const data = `${up.dir}/data/docker/registry/v2/blobs/sha256/${
      blob.sha256.slice(0, 2)
    }/${blob.sha256}/data`;
    const corrupt = await Deno.readFile(data);
    corrupt[10] ^= 0xff; // inside the range asked for, far from the blob's end
    await Deno.writeFile(data, corrupt);

    const path = `/v2/library/range/blobs/${blob.digest}?ns=${NS}`;
    const ranged = await mirror.fetch(path, { headers: { range: "bytes=0-99" } });
    assertEquals(ranged.status, 206);
    assertEquals(ranged.headers.get("content-length"), "100");
    let received = 0;
    let failed = false;
    try {
      for await (const chunk of ranged.body!) received += chunk.byteLength;
    } catch {
      failed = true;
    }
    assert(failed && received < 100, `${received} of 100 bytes, body failed: ${failed}`);
    await waitFor(() => /not cached/.test(mirror.logs()));
    await up.stop();
    const gone = await mirror.fetch(path, { headers: { range: "bytes=0-99" } });
    await gone.body?.cancel();
    assertEquals(gone.status, 503, "the corrupt download was not cached");
  },
);

testEachBackend(
  "kill -9 during a cold pull: no partial blob is ever served, the pull then succeeds",
  async (backend) => {
    await using up = await startUpstream();
    await using mirror = await mirrorOn(backend, { upstreams: [upstreamEntry(up)] });
    const blob = await pushRandomBlob(up, "library/huge", 256 << 20);
    const path = `/v2/library/huge/blobs/${blob.digest}?ns=${NS}`;

    const response = await mirror.fetch(path);
    const reader = response.body!.getReader();
    await reader.read(); // the download is under way
    await mirror.kill();
    await reader.cancel().catch(() => {});

    if (mirror.root) {
      const blobPath = `${mirror.root}/blobs/sha256/${blob.sha256.slice(0, 2)}/${blob.sha256}`;
      assertEquals(await pathExists(blobPath), false, "no blob published by the killed process");
    }
    // Restarted with upstream down: the half-downloaded blob must not be served.
    await up.stop();
    await mirror.start();
    if (mirror.root) {
      const leftovers = [...Deno.readDirSync(`${mirror.root}/.tmp`)].filter((e) =>
        e.name !== ".lock"
      );
      assertEquals(leftovers, [], "start-up removed the killed process's spool");
    }
    const partial = await mirror.fetch(path);
    await partial.body?.cancel();
    assertEquals(partial.status, 503);

    await up.start();
    const head = await mirror.fetch(path, { method: "HEAD" });
    await head.body?.cancel();
    assertEquals(head.status, 200);
    assertEquals(head.headers.get("content-length"), String(blob.size));
    assertEquals(await sha256Of(await mirror.fetch(path)), blob.sha256);
  },
);

testEachBackend(
  "an expired tag is revalidated with HEAD; a moved tag shows after manifest_invalidation_time",
  async (backend) => {
    await using up = await startUpstream();
    await using mirror = await mirrorOn(backend, {
      upstreams: [upstreamEntry(up, { manifest_invalidation_time: "5s" })],
    });
    const first = await pushImage(up, "library/moving", "1", buildImage());
    const digestOf = async () => {
      const response = await mirror.fetch(`/v2/${NS}/library/moving/manifests/1`, {
        headers: { accept: first.mediaType },
      });
      await response.body?.cancel();
      assertEquals(response.status, 200);
      return response.headers.get("docker-content-digest");
    };
    assertEquals(await digestOf(), first.digest);
    const loaded = performance.now();
    const second = await pushImage(up, "library/moving", "1", buildImage());
    up.clearLog();
    assertEquals(await digestOf(), first.digest, "not before manifest_invalidation_time");
    assert(performance.now() - loaded < 5000, "the check above ran inside the window");
    assertEquals(await up.count({ path: /\/manifests\// }), 0);

    await delay(5100 - (performance.now() - loaded));
    assertEquals(await digestOf(), second.digest, "picked up after expiry");
    assertEquals(await up.countManifestHeads("1"), 1, "revalidated with HEAD");
    assertEquals(await up.countManifestGets("1"), 1, "then fetched the new manifest");

    // An unchanged tag past expiry costs one HEAD and no GET.
    await delay(5100);
    up.clearLog();
    assertEquals(await digestOf(), second.digest);
    assertEquals(await up.countManifestHeads("1"), 1);
    assertEquals(await up.countManifestGets(), 0);
  },
);

/** Streams a response body through sha256 without holding it. */
async function sha256Of(response: Response): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of response.body!) hash.update(chunk);
  return hash.digest("hex");
}
