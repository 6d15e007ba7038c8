import { assert, assertEquals, assertThrows } from "../../tests/support/assert.ts";
import {
  ConfigError,
  FETCH_BLOCKED_PORTS,
  mergeCredentials,
  parseConfigFile,
  parseDuration,
  parseUpstreamYaml,
  UpstreamRegistry,
} from "./upstreams.ts";

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

Deno.test("an upstream on a port fetch refuses is a config error naming the key and port", () => {
  for (const port of [6000, 6665, 6669, 10080, 22]) {
    const error = assertThrows(
      () => parseUpstreamYaml(`- namespace: a.io\n  host: mirror.a.io:${port}`, "upstreams.yaml"),
      ConfigError,
    );
    assertEquals(
      error.message,
      `upstreams.yaml: entry 1 (a.io): key "host" (mirror.a.io:${port}): port ${port} is one ` +
        `that fetch refuses to connect to (the WHATWG "bad port" list that browsers block); ` +
        `serve the upstream on another port`,
    );
  }
  const v6 = assertThrows(
    () => parseUpstreamYaml("- namespace: a.io\n  host: '[::1]:6666'\n  tls: false", "f"),
    ConfigError,
  );
  assert(v6.message.includes('key "host" ([::1]:6666): port 6666 is one that fetch'), v6.message);
  const huge = assertThrows(() => parseUpstreamYaml("- namespace: a.io\n  host: a.io:70000", "f"));
  assert(huge.message.includes("port 70000 is not a TCP port"), huge.message);
  // A namespace named only in UPSTREAM_CREDENTIALS is contacted at its own name.
  const credentials = assertThrows(
    () => mergeCredentials([], '{"localhost:6000": {"username": "u", "password": "p"}}'),
    ConfigError,
  );
  assert(
    credentials.message.startsWith(
      'UPSTREAM_CREDENTIALS: namespace "localhost:6000": upstream localhost:6000: port 6000',
    ),
    credentials.message,
  );
  // Neighbours of blocked ports, and the usual registry ports, load.
  for (const port of [5000, 5999, 6001, 6664, 6670, 8080, 10079, 10081, 443]) {
    assertEquals(
      parseUpstreamYaml(`- namespace: a.io\n  host: a.io:${port}`, "f")[0].host,
      `a.io:${port}`,
    );
  }
});

Deno.test("the blocked-port list is the one this Deno's fetch applies", async () => {
  // Every listed port is refused before any connection is tried; its neighbours are not.
  const refused = async (port: number) => {
    try {
      const response = await fetch(`http://127.0.0.1:${port}/`, {
        signal: AbortSignal.timeout(2000),
      });
      await response.body?.cancel();
      return false;
    } catch (e) {
      return /Requests to port \d+ are blocked/.test(String(e));
    }
  };
  for (const port of FETCH_BLOCKED_PORTS) assert(await refused(port), `port ${port} refused`);
  for (const port of [2, 5000, 6001, 6664, 6670, 10079, 10081]) {
    assert(!(await refused(port)), `port ${port} allowed`);
  }
});

Deno.test("rate_limit_reserve: a whole number, absent by default (the client's default applies)", () => {
  const [set, unset] = parseUpstreamYaml(
    "- namespace: a.io\n  host: a.io\n  rate_limit_reserve: 0\n- namespace: b.io\n  host: b.io",
    "f",
  );
  assertEquals(set.rateLimitReserve, 0);
  assertEquals(unset.rateLimitReserve, undefined);
  for (const bad of ["-1", "2.5", '"ten"']) {
    assertThrows(
      () => parseUpstreamYaml(`- namespace: a.io\n  host: a.io\n  rate_limit_reserve: ${bad}`, "f"),
      ConfigError,
      'key "rate_limit_reserve" must be a whole number, 0 or more',
    );
  }
});

Deno.test("filters in the upstream file: lists of patterns and a refusal status", () => {
  const [entry] = parseUpstreamYaml(
    [
      "- namespace: docker.io",
      "  host: registry-1.docker.io",
      '  repositories: ["library/*"]',
      "  exclude_repositories: [library/ubuntu]",
      '  tags: ["v*", latest]',
      "  exclude_tags: ['*-rc*']",
      "  refusal_status: 403",
    ].join("\n"),
    "f",
  );
  assertEquals(entry.filter, {
    repositories: ["library/*"],
    excludeRepositories: ["library/ubuntu"],
    tags: ["v*", "latest"],
    excludeTags: ["*-rc*"],
    refusalStatus: 403,
  });
  const bad = (line: string, message: string) =>
    assertThrows(
      () => parseUpstreamYaml(`- namespace: a.io\n  host: a.io\n  ${line}`, "f"),
      ConfigError,
      message,
    );
  bad("repositories: library/*", 'key "repositories" must be a list of patterns');
  bad('tags: [""]', 'key "tags" must be a list of patterns');
  bad("refusal_status: 500", 'key "refusal_status" must be 403 or 404');
});

Deno.test("hosts: endpoints in order, strings inherit the entry's TLS and credentials", () => {
  const [entry] = parseUpstreamYaml(
    [
      "- namespace: docker.io",
      "  tls: false",
      "  username: bot",
      "  password: secret",
      "  failover_backoff: 45s",
      "  hosts:",
      "    - mirror-a.internal:5000",
      "    - host: registry-1.docker.io",
      "      tls: true",
      "      username: hub",
      "      password: token",
    ].join("\n"),
    "f",
  );
  assertEquals(entry.endpoints, [
    {
      host: "mirror-a.internal:5000",
      tls: false,
      acceptInvalidCerts: false,
      username: "bot",
      password: "secret",
    },
    {
      host: "registry-1.docker.io",
      tls: true,
      acceptInvalidCerts: false,
      username: "hub",
      password: "token",
    },
  ]);
  assertEquals([entry.host, entry.tls, entry.username], ["mirror-a.internal:5000", false, "bot"]);
  assertEquals(entry.failoverBackoffMs, 45_000);
  const bad = (text: string, message: string) =>
    assertThrows(() => parseUpstreamYaml(text, "f"), ConfigError, message);
  bad(
    "- namespace: a.io\n  host: a.io\n  hosts: [b.io]",
    'keys "host" and "hosts" exclude each other',
  );
  bad("- namespace: a.io\n  hosts: []", 'key "hosts" must be a list');
  bad('- namespace: a.io\n  hosts: ["https://b.io"]', 'hosts[0]: key "host" must be host[:port]');
  bad("- namespace: a.io\n  hosts: [{host: b.io, colour: red}]", 'hosts[0]: unknown key "colour"');
  bad('- namespace: a.io\n  hosts: ["b.io:6000"]', "fetch refuses");
});

Deno.test("warm: images of the namespace, with platforms and an interval", () => {
  const [entry] = parseUpstreamYaml(
    [
      "- namespace: docker.io",
      "  host: registry-1.docker.io",
      "  warm_interval: 2h",
      "  warm:",
      "    - library/alpine:3.19",
      "    - image: library/redis@sha256:" + "b".repeat(64),
      "      platforms: [linux/amd64, linux/arm64/v8]",
    ].join("\n"),
    "f",
  );
  assertEquals(entry.warm, [
    { repository: "library/alpine", reference: "3.19" },
    {
      repository: "library/redis",
      reference: `sha256:${"b".repeat(64)}`,
      platforms: ["linux/amd64", "linux/arm64/v8"],
    },
  ]);
  assertEquals(entry.warmIntervalMs, 7_200_000);
  const bad = (lines: string, message: string) =>
    assertThrows(
      () => parseUpstreamYaml(`- namespace: a.io\n  host: a.io\n${lines}`, "f"),
      ConfigError,
      message,
    );
  bad("  warm: library/alpine", 'key "warm" must be a list');
  bad("  warm: [Library/Alpine]", "is not repository:tag or repository@digest");
  bad("  warm: [{image: x, platforms: [amd64]}]", 'key "platforms" must be a list such as');
  bad("  warm: [{image: x, colour: red}]", 'warm[0]: unknown key "colour"');
});

Deno.test("forward_ns: an upstream that is itself a mirror is told the registry", () => {
  const [chained, plain] = parseUpstreamYaml(
    "- namespace: a.io\n  host: mirror:8080\n  forward_ns: true\n- namespace: b.io\n  host: b.io",
    "f",
  );
  assertEquals([chained.forwardNamespace, plain.forwardNamespace], [true, undefined]);
});

Deno.test("upstream bounds: concurrency, rate and queue timeout", () => {
  const [bounded, unbounded] = parseUpstreamYaml(
    [
      "- namespace: a.io",
      "  host: a.io",
      "  max_concurrent_requests: 16",
      "  max_requests_per_second: 5",
      "  queue_timeout: 3s",
      "- namespace: b.io",
      "  host: b.io",
    ].join("\n"),
    "f",
  );
  assertEquals(bounded.limits, { maxConcurrent: 16, perSecond: 5, queueTimeoutMs: 3_000 });
  assertEquals(unbounded.limits, undefined);
  assertThrows(
    () => parseUpstreamYaml("- namespace: a.io\n  host: a.io\n  max_concurrent_requests: 0", "f"),
    ConfigError,
    'key "max_concurrent_requests" must be 1 or more',
  );
  assertThrows(
    () => parseUpstreamYaml("- namespace: a.io\n  host: a.io\n  queue_timeout: 1s", "f"),
    ConfigError,
    'key "queue_timeout" needs max_concurrent_requests or max_requests_per_second',
  );
});

Deno.test("the file as a list (the original's) or a mapping with upstreams and hosted", () => {
  const list = parseConfigFile("- namespace: a.io\n  host: a.io\n", "f");
  assertEquals([list.upstreams.map((u) => u.namespace), list.hosted], [["a.io"], []]);
  const mapping = parseConfigFile(
    "upstreams:\n  - namespace: a.io\n    host: mirror.a.io\nhosted: [myorg, internal]\n",
    "f",
  );
  assertEquals(mapping.upstreams.map((u) => [u.namespace, u.host]), [["a.io", "mirror.a.io"]]);
  assertEquals(mapping.hosted, ["myorg", "internal"]);
  assertEquals(parseConfigFile("hosted:\n  - myorg\n", "f"), { upstreams: [], hosted: ["myorg"] });
  assertEquals(parseConfigFile("upstreams: []\n", "f"), { upstreams: [], hosted: [] });
  assertEquals(parseConfigFile("", "f"), { upstreams: [], hosted: [] });
  // parseUpstreamYaml reads either form.
  assertEquals(
    parseUpstreamYaml("upstreams:\n  - namespace: a.io\n    host: a.io\n", "f").length,
    1,
  );

  const cases: [string, string][] = [
    ["hosted: myorg", 'f: key "hosted" must be a list of first path segments'],
    ["hosted: [myorg, 3]", 'f: key "hosted" must be a list'],
    ["upstreams: {namespace: a.io}", 'f: key "upstreams" must be a list of upstream entries'],
    ["hosts: [myorg]", 'f: unknown top-level key "hosts"'],
    ["just text", "f: expected a list of upstream entries, or a mapping"],
    ["upstreams:\n  - namespace: a.io\n", 'f: upstreams: entry 1 (a.io): key "host" is required'],
    [
      "upstreams:\n  - namespace: a.io\n    host: a.io\n    colour: red\n",
      'f: upstreams: entry 1: unknown key "colour"',
    ],
  ];
  for (const [text, message] of cases) {
    assertThrows(() => parseConfigFile(text, "f"), ConfigError, message);
  }
});

Deno.test("auth: passthrough, its cache time, and mistakes named by file and key", () => {
  const [gated, ttl, plain] = parseUpstreamYaml(
    [
      "- namespace: a.io",
      "  host: a.io",
      "  auth: passthrough",
      "- namespace: b.io",
      "  host: b.io",
      "  auth: passthrough",
      "  passthrough_ttl: 2m",
      "- namespace: c.io",
      "  host: c.io",
    ].join("\n"),
    "f",
  );
  assertEquals([gated.auth, gated.passthroughTtlMs], ["passthrough", undefined]);
  assertEquals([ttl.auth, ttl.passthroughTtlMs], ["passthrough", 120_000]);
  assertEquals([plain.auth, plain.passthroughTtlMs], [undefined, undefined]);
  const bad = (lines: string, message: string) =>
    assertThrows(
      () => parseUpstreamYaml(`- namespace: a.io\n  host: a.io\n${lines}`, "up.yaml"),
      ConfigError,
      message,
    );
  bad("  auth: basic", 'up.yaml: entry 1 (a.io): key "auth" must be "passthrough"');
  bad("  auth: true", 'key "auth" must be "passthrough"');
  bad("  passthrough_ttl: 1m", 'key "passthrough_ttl" needs auth: passthrough');
  bad("  auth: passthrough\n  passthrough_ttl: soon", 'key "passthrough_ttl": invalid duration');
});
