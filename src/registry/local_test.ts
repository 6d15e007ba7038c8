import { assert, assertEquals, assertRejects } from "../../tests/support/assert.ts";
import { digestOf } from "../oci/digest.ts";
import { RegistryError } from "../oci/errors.ts";
import { FilesystemStorage } from "../storage/filesystem.ts";
import { LocalRegistry, paginate } from "./local.ts";

const encoder = new TextEncoder();

function stream(...parts: string[]): ReadableStream<Uint8Array> {
  return ReadableStream.from(parts.map((part) => encoder.encode(part)));
}

async function withRegistry(
  test: (
    registry: LocalRegistry,
    clock: { now: number },
    storage: FilesystemStorage,
  ) => Promise<void>,
  options: { sparseManifests?: boolean } = {},
) {
  const root = await Deno.makeTempDir({ prefix: "local-registry-" });
  const storage = new FilesystemStorage(root);
  const clock = { now: 1_000_000 };
  try {
    const registry = new LocalRegistry({
      storage,
      namespaces: ["myorg"],
      uploadExpiryMs: 60_000,
      now: () => clock.now,
      ...options,
    });
    await test(registry, clock, storage);
  } finally {
    await storage.close();
    await Deno.remove(root, { recursive: true });
  }
}

async function code(promise: Promise<unknown>): Promise<string> {
  const error = await assertRejects(() => promise, RegistryError);
  return error.code;
}

async function keys(storage: FilesystemStorage, prefix: string): Promise<string[]> {
  const found: string[] = [];
  for await (const key of storage.list(prefix)) found.push(key);
  return found.sort();
}

Deno.test("chunks in order make one verified blob; the session is gone after", async () => {
  await withRegistry(async (registry, _clock, storage) => {
    const upload = await registry.uploads.start("myorg/a");
    assertEquals(
      (await registry.uploads.append("myorg/a", upload.id, stream("hel"), { start: 0 })).offset,
      3,
    );
    assertEquals(
      await code(registry.uploads.append("myorg/a", upload.id, stream("x"), { start: 1 })),
      "RANGE_INVALID",
    );
    assertEquals((await registry.uploads.append("myorg/a", upload.id, stream("lo"), {})).offset, 5);
    const digest = digestOf(encoder.encode("hello, world"), "sha512");
    const blob = await registry.uploads.finish("myorg/a", upload.id, digest, stream(", world"));
    assertEquals(blob, { digest, size: 12 });
    assertEquals(await keys(storage, "uploads/"), []);
    const got = await registry.blobs.get("myorg/a", digest, {
      body: true,
      range: { first: 7, last: 11 },
    });
    assertEquals(got!.range, { start: 7, end: 11 });
    assertEquals(await new Response(got!.body).text(), "world");
    assertEquals(
      await registry.blobs.get("myorg/b", digest, { body: false }),
      null,
      "other repositories do not see it",
    );
  });
});

Deno.test("a wrong digest publishes nothing and keeps the session", async () => {
  await withRegistry(async (registry, _clock, storage) => {
    const upload = await registry.uploads.start("myorg/a");
    await registry.uploads.append("myorg/a", upload.id, stream("abc"), {});
    const wrong = digestOf(encoder.encode("abd"));
    assertEquals(
      await code(registry.uploads.finish("myorg/a", upload.id, wrong, null)),
      "DIGEST_INVALID",
    );
    assertEquals(await keys(storage, "blobs/"), []);
    assertEquals((await registry.uploads.status("myorg/a", upload.id)).offset, 3);
  });
});

Deno.test("sessions expire, leave nothing, and are unknown once expired", async () => {
  await withRegistry(async (registry, clock, storage) => {
    const old = await registry.uploads.start("myorg/a");
    await registry.uploads.append("myorg/a", old.id, stream("abc"), {});
    clock.now += 30_000;
    const fresh = await registry.uploads.start("myorg/a");
    clock.now += 40_000;
    assertEquals(await code(registry.uploads.status("myorg/a", old.id)), "BLOB_UPLOAD_UNKNOWN");
    assertEquals(await registry.uploads.expire(), 1);
    assertEquals(await keys(storage, "uploads/"), [`uploads/${fresh.id}/info`]);
    assertEquals(await code(registry.uploads.status("myorg/b", fresh.id)), "BLOB_UPLOAD_UNKNOWN");
  });
});

Deno.test("mounts link only what the source repository has", async () => {
  await withRegistry(async (registry) => {
    const digest = digestOf(encoder.encode("x"));
    const upload = await registry.uploads.start("myorg/a");
    await registry.uploads.finish("myorg/a", upload.id, digest, stream("x"));
    assertEquals(await registry.blobs.mount("myorg/b", digest, "myorg/c"), null);
    assertEquals(await registry.blobs.mount("myorg/b", digest, "myorg/a"), { digest, size: 1 });
    assertEquals(await registry.blobs.mount("myorg/d", digest), { digest, size: 1 });
    await registry.blobs.delete("myorg/a", digest);
    assertEquals(await registry.blobs.get("myorg/a", digest, { body: false }), null);
    assert(
      await registry.blobs.get("myorg/b", digest, { body: false }),
      "a delete unlinks one repository only",
    );
  });
});

Deno.test("manifests: references checked, subject indexed, tags and referrers listed", async () => {
  for (const sparse of [false, true]) {
    await withRegistry(async (registry) => {
      const config = digestOf(encoder.encode("{}"));
      const upload = await registry.uploads.start("myorg/a");
      await registry.uploads.finish("myorg/a", upload.id, config, stream("{}"));
      const layer = digestOf(encoder.encode("layer"));
      const image = encoder.encode(JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: config, size: 2 },
        layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", digest: layer, size: 5 }],
      }));
      const put = registry.manifests.put("myorg/a", "v1", image, null);
      if (!sparse) {
        assertEquals(await code(put), "MANIFEST_BLOB_UNKNOWN");
        return;
      }
      const { digest } = await put;
      const signature = encoder.encode(JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        artifactType: "application/example.sig",
        config: { mediaType: "application/vnd.oci.empty.v1+json", digest: config, size: 2 },
        layers: [],
        subject: {
          mediaType: "application/vnd.oci.image.manifest.v1+json",
          digest,
          size: image.length,
        },
        annotations: { "org.example": "yes" },
      }));
      const signed = await registry.manifests.put("myorg/a", digestOf(signature), signature, null, [
        "sig",
      ]);
      assertEquals(signed.subject, digest);
      assertEquals(signed.tags, ["sig"]);
      assertEquals((await registry.tags.list("myorg/a", {})).items, ["sig", "v1"]);
      const referrers = await registry.referrers.list("myorg/a", digest);
      assertEquals(referrers, [{
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        digest: signed.digest,
        size: signature.length,
        artifactType: "application/example.sig",
        annotations: { "org.example": "yes" },
      }]);
      assertEquals(await registry.referrers.list("myorg/a", digest, "other/type"), []);
      await registry.manifests.delete("myorg/a", signed.digest);
      assertEquals(await registry.referrers.list("myorg/a", digest), []);
      assertEquals((await registry.tags.list("myorg/a", {})).items, ["v1"]);
      assertEquals((await registry.catalog({})).items, ["myorg/a"]);
    }, { sparseManifests: sparse });
  }
});

Deno.test("pages: sorted, after last, at most n, next only when more remain", () => {
  assertEquals(paginate(["c", "a", "b"], {}), { items: ["a", "b", "c"] });
  assertEquals(paginate(["c", "a", "b"], { n: 2 }), { items: ["a", "b"], next: "b" });
  assertEquals(paginate(["c", "a", "b"], { n: 2, last: "b" }), { items: ["c"] });
  assertEquals(paginate(["c", "a", "b"], { n: 0 }), { items: [] });
});

Deno.test("one chunk then an empty PUT: checked (hashed on arrival, or re-read), then moved", async () => {
  await withRegistry(async (registry, _clock, storage) => {
    const upload = await registry.uploads.start("myorg/a");
    await registry.uploads.append("myorg/a", upload.id, stream("one ", "chunk"), {});
    const wrong = digestOf(encoder.encode("other"));
    assertEquals(
      await code(registry.uploads.finish("myorg/a", upload.id, wrong, null)),
      "DIGEST_INVALID",
    );
    assertEquals(await keys(storage, "blobs/"), []);
    // The retry has no running hash left: the stored chunk is hashed again.
    const digest = digestOf(encoder.encode("one chunk"));
    assertEquals(await registry.uploads.finish("myorg/a", upload.id, digest, null), {
      digest,
      size: 9,
    });
    assertEquals(await keys(storage, "uploads/"), []);
    const blob = await registry.blobs.get("myorg/a", digest, { body: true });
    assertEquals(await new Response(blob!.body).text(), "one chunk");
  });
});
