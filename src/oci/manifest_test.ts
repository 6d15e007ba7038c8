import { assertEquals, assertThrows } from "../../tests/support/assert.ts";
import { RegistryError } from "./errors.ts";
import { parseManifest } from "./manifest.ts";

const bytes = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));
const D = (n: string) => `sha256:${n.repeat(64)}`;

Deno.test("an image: config, layers without foreign ones, artifactType from the config", () => {
  const parsed = parseManifest(
    bytes({
      schemaVersion: 2,
      config: { mediaType: "application/x.config", digest: D("a"), size: 1 },
      layers: [
        { mediaType: "application/vnd.oci.image.layer.v1.tar", digest: D("b"), size: 2 },
        {
          mediaType: "application/vnd.oci.image.layer.nondistributable.v1.tar",
          digest: D("c"),
          size: 3,
          urls: ["https://example.test/c"],
        },
      ],
    }),
    "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
  );
  assertEquals(parsed.mediaType, "application/vnd.oci.image.manifest.v1+json");
  assertEquals(parsed.config?.digest, D("a"));
  assertEquals(parsed.layers.map((l) => l.digest), [D("b")]);
  assertEquals(parsed.artifactType, "application/x.config");
});

Deno.test("what is refused, and how", () => {
  const cases: [Uint8Array, string | null, number][] = [
    [new TextEncoder().encode("{"), null, 400],
    [bytes([]), null, 400],
    [bytes({ schemaVersion: 1 }), null, 400],
    [bytes({ schemaVersion: 2, mediaType: "text/plain" }), null, 400],
    [bytes({ schemaVersion: 2, manifests: [] }), "application/vnd.oci.image.manifest.v1+json", 400],
    [
      bytes({ schemaVersion: 2, config: { mediaType: "x", digest: "sha256:1", size: 1 } }),
      null,
      400,
    ],
    [bytes({ schemaVersion: 2, config: { mediaType: "x", digest: D("a"), size: -1 } }), null, 400],
    [new Uint8Array(4 * 1024 * 1024 + 1), null, 413],
  ];
  for (const [body, type, status] of cases) {
    const error = assertThrows(() => parseManifest(body, type), RegistryError);
    assertEquals([error.code, error.status], ["MANIFEST_INVALID", status]);
  }
});

Deno.test("an index: children and an optional artifactType", () => {
  const parsed = parseManifest(
    bytes({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [{
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        digest: D("d"),
        size: 9,
      }],
      subject: { mediaType: "application/vnd.oci.image.manifest.v1+json", digest: D("e"), size: 1 },
    }),
    null,
  );
  assertEquals(parsed.manifests.map((m) => m.digest), [D("d")]);
  assertEquals(parsed.subject?.digest, D("e"));
  assertEquals(parsed.artifactType, undefined);
});
