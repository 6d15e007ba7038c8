import { assertEquals, assertThrows } from "../../tests/support/assert.ts";
import { digestOf } from "../oci/digest.ts";
import { OCI_INDEX, OCI_MANIFEST } from "../oci/media_types.ts";
import { RegistryError } from "../oci/errors.ts";
import { parseImageName } from "../oci/reference.ts";
import { type ImageSource, warmImage } from "./warm.ts";

const encoder = new TextEncoder();
const blob = (text: string) => digestOf(encoder.encode(text));

/** A source holding one multi-platform image; it records what was asked for. */
function source() {
  const manifests = new Map<string, { mediaType: string; bytes: Uint8Array }>();
  const add = (document: unknown, mediaType: string) => {
    const bytes = encoder.encode(JSON.stringify(document));
    const digest = digestOf(bytes);
    manifests.set(digest, { mediaType, bytes });
    return digest;
  };
  const image = (layer: string) =>
    add({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { digest: blob(`config-${layer}`) },
      layers: [{ digest: blob("shared") }, { digest: blob(layer) }],
    }, OCI_MANIFEST);
  const amd64 = image("amd64");
  const arm64 = image("arm64");
  const attestation = image("attestation");
  const index = add({
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: [
      {
        mediaType: OCI_MANIFEST,
        digest: amd64,
        size: 1,
        platform: { os: "linux", architecture: "amd64" },
      },
      {
        mediaType: OCI_MANIFEST,
        digest: arm64,
        size: 1,
        platform: { os: "linux", architecture: "arm64", variant: "v8" },
      },
      {
        mediaType: OCI_MANIFEST,
        digest: attestation,
        size: 1,
        platform: { os: "unknown", architecture: "unknown" },
      },
    ],
  }, OCI_INDEX);
  manifests.set("1", manifests.get(index)!);
  const asked: string[] = [];
  const cached = new Set([blob("shared")]);
  const src: ImageSource = {
    manifest: (_repo, reference) => {
      asked.push(`manifest ${reference}`);
      return Promise.resolve(manifests.get(reference)!);
    },
    blob: (_repo, digest) => {
      asked.push(`blob ${digest}`);
      return Promise.resolve(cached.has(digest) ? 0 : 100);
    },
  };
  return { src, asked, amd64, arm64 };
}

Deno.test("warm: every platform of an index by default, each blob once", async () => {
  const { src, asked } = source();
  const result = await warmImage(src, { repository: "library/app", reference: "1" });
  assertEquals(result, { manifests: 4, blobs: 7, fetchedBytes: 600 });
  assertEquals(asked.filter((a) => a === `blob ${blob("shared")}`).length, 1, "shared layer once");
});

Deno.test("warm: chosen platforms only (variant optional); attestations left out", async () => {
  const { src, asked, amd64, arm64 } = source();
  const result = await warmImage(src, {
    repository: "library/app",
    reference: "1",
    platforms: ["linux/arm64"],
  });
  assertEquals(result, { manifests: 2, blobs: 3, fetchedBytes: 200 });
  assertEquals(asked.includes(`manifest ${arm64}`), true);
  assertEquals(asked.includes(`manifest ${amd64}`), false);
  const exact = await warmImage(src, {
    repository: "r",
    reference: "1",
    platforms: ["linux/arm64/v7"],
  });
  assertEquals(exact.manifests, 1, "a variant that does not match");
});

Deno.test("image names as docker pull reads them", () => {
  const digest = `sha256:${"a".repeat(64)}`;
  assertEquals(parseImageName("alpine"), {
    registry: "docker.io",
    repository: "library/alpine",
    reference: "latest",
  });
  assertEquals(parseImageName("alpine:3.19"), {
    registry: "docker.io",
    repository: "library/alpine",
    reference: "3.19",
  });
  assertEquals(parseImageName("bitnami/redis:7"), {
    registry: "docker.io",
    repository: "bitnami/redis",
    reference: "7",
  });
  assertEquals(parseImageName("registry.k8s.io/pause:3.9"), {
    registry: "registry.k8s.io",
    repository: "pause",
    reference: "3.9",
  });
  assertEquals(parseImageName("localhost:5000/team/app"), {
    registry: "localhost:5000",
    repository: "team/app",
    reference: "latest",
  });
  assertEquals(parseImageName(`ghcr.io/o/app:1@${digest}`), {
    registry: "ghcr.io",
    repository: "o/app",
    reference: digest,
  });
  for (const bad of ["", "UPPER/case", "a/b:bad tag", "x@sha256:short"]) {
    assertThrows(() => parseImageName(bad), RegistryError);
  }
});
