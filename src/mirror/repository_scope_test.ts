/**
 * Repository-scoped content in the mirror: a digest is served for a repository only when that
 * repository holds it (named by a manifest served for it, or confirmed upstream for it), even
 * though storage keeps one copy per digest for everyone.
 */
import { assertEquals, assertRejects } from "../../tests/support/assert.ts";
import { FakeUpstream, randomBytes, readAll } from "../../tests/support/fake_upstream.ts";
import { UpstreamRegistry } from "../config/upstreams.ts";
import { digestOf } from "../oci/digest.ts";
import { RegistryError } from "../oci/errors.ts";
import { OCI_MANIFEST } from "../oci/media_types.ts";
import { FilesystemStorage } from "../storage/filesystem.ts";
import { Mirror } from "./mirror.ts";

const PRIVATE = "private.test";
const APP = "team/app";

async function withStore(
  fn: (storage: FilesystemStorage, upstream: FakeUpstream) => Promise<void>,
) {
  const root = await Deno.makeTempDir({ prefix: "scope-test-" });
  const storage = new FilesystemStorage(root);
  const upstream = new FakeUpstream();
  // Upstream has the content in private.test/team/app only.
  upstream.holds = (ns, repo) => ns === PRIVATE && repo === APP;
  try {
    await fn(storage, upstream);
  } finally {
    await storage.close();
    await Deno.remove(root, { recursive: true });
  }
}

function mirrorOver(storage: FilesystemStorage, upstream: FakeUpstream): Mirror {
  return new Mirror({
    storage,
    upstream,
    upstreams: new UpstreamRegistry([]),
    spoolDir: storage.tempDir,
    log: () => {},
  });
}

/** An image in upstream: its manifest digest and its layer. */
function addImage(upstream: FakeUpstream): { manifest: string; layer: string; config: string } {
  const layerBytes = randomBytes(50_000);
  const layer = upstream.addBlob(layerBytes);
  const config = upstream.addBlob(new TextEncoder().encode("{}"));
  const manifest = upstream.addManifest("1", {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: config, size: 2 },
    layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", digest: layer, size: 50_000 }],
  });
  return { manifest, layer, config };
}

async function code(promise: Promise<unknown>): Promise<string> {
  return (await assertRejects(() => promise, RegistryError)).code;
}

Deno.test("a cached private blob or manifest is not served under another name", async () => {
  await withStore(async (storage, upstream) => {
    const mirror = mirrorOver(storage, upstream);
    const { manifest, layer } = addImage(upstream);
    await mirror.getManifest(PRIVATE, APP, "1", [OCI_MANIFEST]);
    const blob = await mirror.getBlob(PRIVATE, APP, layer, { body: true });
    assertEquals(digestOf(await readAll(blob.body!)), layer);
    await mirror.settled();
    for (
      const [ns, repo] of [[PRIVATE, "team/other"], ["169.254.169.254", "x"], ["docker.io", APP]]
    ) {
      assertEquals(await code(mirror.getBlob(ns, repo, layer, { body: true })), "BLOB_UNKNOWN");
      assertEquals(await code(mirror.getBlob(ns, repo, layer, { body: false })), "BLOB_UNKNOWN");
      assertEquals(
        await code(mirror.getManifest(ns, repo, manifest, [OCI_MANIFEST])),
        "MANIFEST_UNKNOWN",
      );
    }
    // Upstream down: an unconfirmable name is refused too, never served from the cache.
    upstream.failure = new RegistryError("UNAVAILABLE", "down");
    assertEquals(
      await code(mirror.getBlob("docker.io", "x", layer, { body: true })),
      "UNAVAILABLE",
    );
    // The repository that holds it is served from the cache as before.
    const again = await mirror.getBlob(PRIVATE, APP, layer, { body: true });
    assertEquals(digestOf(await readAll(again.body!)), layer);
  });
});

Deno.test("a download under way for one repository is not followed for another", async () => {
  await withStore(async (storage, upstream) => {
    const mirror = mirrorOver(storage, upstream);
    const { layer } = addImage(upstream);
    upstream.chunkDelayMs = 5;
    upstream.chunkSize = 4096;
    const first = await mirror.getBlob(PRIVATE, APP, layer, { body: true });
    assertEquals(
      await code(mirror.getBlob(PRIVATE, "other", layer, { body: true })),
      "BLOB_UNKNOWN",
    );
    assertEquals(digestOf(await readAll(first.body!)), layer);
    await mirror.settled();
  });
});

Deno.test("warm: no extra storage request; after a restart the links answer with upstream down", async () => {
  await withStore(async (storage, upstream) => {
    const { manifest, layer, config } = addImage(upstream);
    const mirror = mirrorOver(storage, upstream);
    await mirror.getManifest(PRIVATE, APP, "1", [OCI_MANIFEST]);
    for (const digest of [config, layer]) {
      await readAll((await mirror.getBlob(PRIVATE, APP, digest, { body: true })).body!);
    }
    await mirror.settled();
    const calls: string[] = [];
    for (const method of ["stat", "read", "readBytes"] as const) {
      const original = storage[method].bind(storage) as (...args: unknown[]) => unknown;
      (storage as unknown as Record<string, unknown>)[method] = (...args: unknown[]) => {
        calls.push(method);
        return original(...args);
      };
    }
    await readAll((await mirror.getBlob(PRIVATE, APP, layer, { body: true })).body!);
    assertEquals(calls, ["read"], "a warm blob GET is one storage read, as without scoping");

    // A new process over the same store, upstream unreachable: pulls by digest still work
    // for the repository that holds them, from the links written when they were fetched.
    upstream.failure = new RegistryError("UNAVAILABLE", "down");
    const restarted = mirrorOver(storage, upstream);
    assertEquals(
      (await restarted.getManifest(PRIVATE, APP, manifest, [OCI_MANIFEST])).digest,
      manifest,
    );
    for (const digest of [layer, config]) {
      const blob = await restarted.getBlob(PRIVATE, APP, digest, { body: true });
      assertEquals(digestOf(await readAll(blob.body!)), digest);
    }
    assertEquals(
      await code(restarted.getBlob(PRIVATE, "other", layer, { body: true })),
      "UNAVAILABLE",
    );
    await restarted.settled();
  });
});
