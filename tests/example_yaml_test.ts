/**
 * example.yaml (the real-world upstream config shipped with the project) parses with the mirror's
 * own parser, lists the common public registries, and keeps its invalidation times sane.
 */
import { parseAuthConfig } from "../src/config/access.ts";
import { assert, assertEquals } from "./support/assert.ts";
import {
  mergeCredentials,
  parseConfigFile,
  parseDuration,
  parseUpstreamYaml,
} from "../src/config/upstreams.ts";

const EXAMPLE = new URL("../example.yaml", import.meta.url);

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

Deno.test("example.yaml parses and lists the common public registries", async () => {
  const upstreams = parseUpstreamYaml(await Deno.readTextFile(EXAMPLE), "example.yaml");
  const hosts = Object.fromEntries(upstreams.map((u) => [u.namespace, u.host]));
  assertEquals(hosts, {
    "docker.io": "registry-1.docker.io",
    "ghcr.io": "ghcr.io",
    "quay.io": "quay.io",
    "gcr.io": "gcr.io",
    "registry.k8s.io": "registry.k8s.io",
    "mcr.microsoft.com": "mcr.microsoft.com",
    "public.ecr.aws": "public.ecr.aws",
  });
  for (const upstream of upstreams) {
    const where = upstream.namespace;
    assert(upstream.tls, `${where}: public registries are HTTPS`);
    assert(!upstream.acceptInvalidCerts, `${where}: certificates are verified`);
    assertEquals(upstream.username, undefined, `${where}: no credentials in the example`);
    assertEquals(upstream.password, undefined, `${where}: no credentials in the example`);
    // Tags are rechecked often enough to see new pushes the same day, rarely enough to spare
    // rate limits; blobs are content-addressed and only rechecked for deletion now and then.
    assert(
      upstream.manifestInvalidationMs >= 5 * 60_000 && upstream.manifestInvalidationMs <= DAY,
      `${where}: manifest_invalidation_time ${upstream.manifestInvalidationMs} ms`,
    );
    assert(
      upstream.blobInvalidationMs >= DAY,
      `${where}: blob_invalidation_time ${upstream.blobInvalidationMs} ms`,
    );
    assert(upstream.configured);
  }
  assertEquals(upstreams.find((u) => u.namespace === "docker.io")!.manifestInvalidationMs, HOUR);
});

Deno.test("example.yaml: the commented private-registry entry is valid once uncommented", async () => {
  const text = await Deno.readTextFile(EXAMPLE);
  const lines = text.split("\n");
  const start = lines.findIndex((line) => line.startsWith("# - namespace:"));
  assert(start > 0, "example.yaml shows a commented private registry entry");
  const block: string[] = [];
  for (const line of lines.slice(start)) {
    if (!line.startsWith("# ")) break;
    block.push(line.slice(2));
  }
  const [entry] = parseUpstreamYaml(block.join("\n"), "example.yaml (private entry)");
  assertEquals(entry.namespace, "registry.internal.example:5000");
  assertEquals(entry.tls, false);
  assertEquals(entry.username, "mirror-bot");
  assertEquals(entry.manifestInvalidationMs, parseDuration("5m"));
  assertEquals(entry.blobInvalidationMs, parseDuration("14d"));
});

Deno.test("example.yaml: the commented mapping form with hosted: is valid once uncommented", async () => {
  const lines = (await Deno.readTextFile(EXAMPLE)).split("\n");
  const start = lines.indexOf("# upstreams:");
  assert(start > 0, "example.yaml shows the mapping form");
  const block: string[] = [];
  for (const line of lines.slice(start)) {
    if (!line.startsWith("# ")) break;
    block.push(line.slice(2));
  }
  const file = parseConfigFile(block.join("\n"), "example.yaml (mapping form)");
  assertEquals(file.upstreams.map((u) => u.namespace), ["docker.io"]);
  assertEquals(file.hosted, ["myorg", "internal"]);
});

Deno.test("README.md: its upstream YAML, auth config and UPSTREAM_CREDENTIALS examples are valid", async () => {
  const docs = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const yamlBlocks = [...docs.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]);
  assert(yamlBlocks.length >= 1, "README.md shows the upstream YAML");
  let authConfigs = 0;
  const hostedBlocks: string[][] = [];
  for (const block of yamlBlocks) {
    // Two kinds of file: the upstream list, and the --auth-config mapping.
    if (/^htpasswd:/m.test(block)) {
      parseAuthConfig(block, "README.md", "/etc/oci-registry");
      authConfigs++;
      continue;
    }
    const upstreams = parseUpstreamYaml(block, "README.md");
    assert(upstreams.length >= 1);
    if (/^hosted:/m.test(block)) hostedBlocks.push(parseConfigFile(block, "README.md").hosted);
  }
  assertEquals(hostedBlocks, [["myorg", "internal"]], "README.md shows the hosted: mapping form");
  assert(authConfigs >= 1, "README.md shows an --auth-config file");
  const credentials = /UPSTREAM_CREDENTIALS='([^']+)'/.exec(docs);
  assert(credentials, "README.md shows UPSTREAM_CREDENTIALS");
  const [merged] = mergeCredentials([], credentials[1]);
  assertEquals(merged.namespace, "docker.io");
  assertEquals(merged.host, "registry-1.docker.io");
  assertEquals(merged.username, "mirror-bot");
});
