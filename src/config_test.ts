import { assert, assertEquals, assertThrows } from "../tests/support/assert.ts";
import {
  ConfigError,
  mergeCredentials,
  parseDuration,
  parseUpstreamYaml,
  UpstreamRegistry,
} from "./config.ts";

Deno.test("durations in the original's units", () => {
  assertEquals(parseDuration("0s"), 0);
  assertEquals(parseDuration("90m"), 90 * 60_000);
  assertEquals(parseDuration("12h"), 12 * 3_600_000);
  assertEquals(parseDuration("14d"), 14 * 86_400_000);
  assertEquals(parseDuration("1h30m"), 90 * 60_000);
  assertEquals(parseDuration("45"), 45_000);
  for (const bad of ["", "5 parsecs", "h", "-1s", "1y"]) {
    assertThrows(() => parseDuration(bad), ConfigError);
  }
});

Deno.test("YAML entries with every key, defaults for the rest", () => {
  const [full, minimal] = parseUpstreamYaml(
    `
- namespace: example.com
  host: registry.example.com:5000
  tls: false
  accept_invalid_certs: true
  user_agent: containerd/1.6.8
  username: example
  password: hunter2
  manifest_invalidation_time: 0s
  blob_invalidation_time: 30d
- namespace: ghcr.io
  host: ghcr.io
`,
    "upstreams.yaml",
  );
  assertEquals(full, {
    namespace: "example.com",
    host: "registry.example.com:5000",
    tls: false,
    acceptInvalidCerts: true,
    userAgent: "containerd/1.6.8",
    username: "example",
    password: "hunter2",
    manifestInvalidationMs: 0,
    blobInvalidationMs: 30 * 86_400_000,
    configured: true,
  });
  assertEquals(minimal.tls, true);
  assertEquals(minimal.acceptInvalidCerts, false);
  assertEquals(minimal.manifestInvalidationMs, 3_600_000);
});

Deno.test("bad YAML names the file, the entry and the key", () => {
  const cases: [string, string][] = [
    ["- namespace: a.io\n  host: [", "upstreams.yaml: invalid YAML"],
    ["namespace: a.io", "expected a list"],
    ["- host: a.io", 'entry 1: key "namespace" is required'],
    ["- namespace: a.io", 'entry 1 (a.io): key "host" is required'],
    ["- namespace: a.io\n  host: a.io\n  tls: maybe", 'key "tls" must be true or false'],
    [
      "- namespace: a.io\n  host: a.io\n  manifest_invalidation_time: soon",
      'key "manifest_invalidation_time"',
    ],
    ["- namespace: a.io\n  host: a.io\n  colour: red", 'unknown key "colour"'],
    ["- namespace: a.io\n  host: https://a.io", 'key "host" must be host[:port]'],
    ["- namespace: a.io\n  host: a.io\n- namespace: a.io\n  host: b.io", "repeated"],
  ];
  for (const [text, message] of cases) {
    const error = assertThrows(() => parseUpstreamYaml(text, "upstreams.yaml"), ConfigError);
    assert(error.message.includes(message), `${error.message} should include ${message}`);
    assert(error.message.startsWith("upstreams.yaml"), error.message);
  }
});

Deno.test("UPSTREAM_CREDENTIALS merges over the file and adds namespaces", () => {
  const file = parseUpstreamYaml("- namespace: a.io\n  host: mirror.a.io\n  tls: false", "f");
  const merged = new UpstreamRegistry(
    mergeCredentials(
      file,
      '{"a.io": {"username": "u", "password": "p"}, "b.io": {"username": "v", "password": "q"}}',
    ),
  );
  assertEquals(merged.get("a.io").host, "mirror.a.io");
  assertEquals(merged.get("a.io").tls, false);
  assertEquals(merged.get("a.io").username, "u");
  assertEquals(merged.get("b.io").host, "b.io");
  assertEquals(merged.get("b.io").password, "q");
  assertEquals(merged.get("b.io").configured, true);
});

Deno.test("bad UPSTREAM_CREDENTIALS never echoes secrets", () => {
  for (
    const json of [
      '{"a.io": {"username": "u", "password": "s3cret"',
      '{"a.io": {"username": "u"}}',
      "[1]",
    ]
  ) {
    const error = assertThrows(() => mergeCredentials([], json), ConfigError);
    assert(error.message.startsWith("UPSTREAM_CREDENTIALS"), error.message);
    assert(!error.message.includes("s3cret"), error.message);
  }
});

Deno.test("defaults: any namespace maps to itself over https, docker.io to registry-1", () => {
  const upstreams = new UpstreamRegistry([]);
  assertEquals(upstreams.get("docker.io").host, "registry-1.docker.io");
  assertEquals(upstreams.get("quay.io").host, "quay.io");
  assertEquals(upstreams.get("quay.io").tls, true);
  assertEquals(upstreams.get("quay.io").configured, false);
});
