/**
 * The HTTP surface over a real socket: status codes, OCI error bodies, the headers clients
 * rely on, ranges and conditional requests. Upstream is an in-process fake (edge cases only).
 */
import { assert, assertEquals } from "../../tests/support/assert.ts";
import { FakeUpstream, randomBytes } from "../../tests/support/fake_upstream.ts";
import { Mirror } from "../mirror/mirror.ts";
import { UpstreamRegistry } from "../config/upstreams.ts";
import { digestOf } from "../oci/digest.ts";
import { DOCKER_MANIFEST, OCI_MANIFEST } from "../oci/media_types.ts";
import { RegistryError } from "../oci/errors.ts";
import { Metrics } from "../runtime/metrics.ts";
import { createHandler, MAX_HEADER_BYTES, MAX_TARGET_BYTES } from "./server.ts";
import { rawRequest } from "../../tests/support/raw_http.ts";
import { FilesystemStorage } from "../storage/filesystem.ts";

interface Fixture {
  url: string;
  port: number;
  metrics: Metrics;
  mirror: Mirror;
  upstream: FakeUpstream;
  logs: string[];
}

async function withServer(
  fn: (fixture: Fixture) => Promise<void>,
  readiness?: () => Promise<string | null>,
) {
  const root = await Deno.makeTempDir({ prefix: "server-test-" });
  const storage = new FilesystemStorage(root);
  const upstream = new FakeUpstream();
  const logs: string[] = [];
  const metrics = new Metrics();
  const mirror = new Mirror({
    storage,
    upstream,
    upstreams: new UpstreamRegistry([]),
    spoolDir: storage.tempDir,
    log: (line) => logs.push(line),
    metrics,
  });
  const handler = createHandler({
    mirror,
    defaultNamespace: "docker.io",
    metrics,
    log: (l) => logs.push(l),
    readiness,
  });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
  try {
    const port = server.addr.port;
    await fn({ url: `http://127.0.0.1:${port}`, port, metrics, mirror, upstream, logs });
  } finally {
    await server.shutdown();
    await mirror.settled();
    await storage.close();
    await Deno.remove(root, { recursive: true });
  }
}

async function errorOf(
  response: Response,
): Promise<{ status: number; code: string; type: string | null }> {
  const body = await response.json();
  return {
    status: response.status,
    code: body.errors?.[0]?.code,
    type: response.headers.get("content-type"),
  };
}

const manifest = {
  schemaVersion: 2,
  mediaType: DOCKER_MANIFEST,
  config: {
    mediaType: "application/vnd.docker.container.image.v1+json",
    digest: "sha256:" + "c".repeat(64),
    size: 2,
  },
  layers: [],
};

Deno.test("liveness and the /v2/ ping", async () => {
  await withServer(async ({ url }) => {
    const root = await fetch(`${url}/`);
    assertEquals(root.status, 200);
    await root.body?.cancel();
    const ping = await fetch(`${url}/v2/`);
    assertEquals(ping.status, 200);
    assertEquals(await ping.json(), {});
    assertEquals(ping.headers.get("docker-distribution-api-version"), "registry/2.0");
  });
});

Deno.test("probes: /healthz always 200; /readyz 200 or 503 saying why; HEAD has no body", async () => {
  let notReady: string | null = null;
  await withServer(async ({ url }) => {
    const health = await fetch(`${url}/healthz`);
    assertEquals([health.status, await health.text()], [200, "ok\n"]);
    const ready = await fetch(`${url}/readyz`);
    assertEquals([ready.status, await ready.text()], [200, "ready\n"]);
    notReady = "storage: S3 endpoint unreachable";
    const down = await fetch(`${url}/readyz`);
    assertEquals([down.status, await down.text()], [
      503,
      "not ready: storage: S3 endpoint unreachable\n",
    ]);
    const head = await fetch(`${url}/readyz`, { method: "HEAD" });
    assertEquals([head.status, await head.text()], [503, ""]);
    const post = await fetch(`${url}/healthz`, { method: "POST" });
    assertEquals(post.status, 405);
    await post.body?.cancel();
  }, () => Promise.resolve(notReady));
});

Deno.test("manifests carry digest, type, length and ETag on GET and HEAD; 304 on If-None-Match", async () => {
  await withServer(async ({ url, upstream }) => {
    const digest = upstream.addManifest("1", manifest);
    const size = String(new TextEncoder().encode(JSON.stringify(manifest)).byteLength);
    for (const method of ["GET", "HEAD"]) {
      const response = await fetch(`${url}/v2/library/alpine/manifests/1`, { method });
      assertEquals(response.status, 200);
      assertEquals(response.headers.get("docker-content-digest"), digest);
      assertEquals(response.headers.get("content-type"), DOCKER_MANIFEST);
      assertEquals(response.headers.get("content-length"), size, `${method} Content-Length`);
      assertEquals(response.headers.get("etag"), `"${digest}"`);
      assertEquals(response.headers.get("docker-distribution-api-version"), "registry/2.0");
      const body = new Uint8Array(await response.arrayBuffer());
      assertEquals(body.byteLength, method === "GET" ? Number(size) : 0);
    }
    const byDigest = await fetch(`${url}/v2/alpine/manifests/${encodeURIComponent(digest)}`);
    assertEquals(digestOf(new Uint8Array(await byDigest.arrayBuffer())), digest);
    const notModified = await fetch(`${url}/v2/alpine/manifests/1`, {
      headers: { "if-none-match": `"${digest}"` },
    });
    assertEquals(notModified.status, 304);
    await notModified.body?.cancel();
  });
});

Deno.test("blobs: full, ranged (206), unsatisfiable (416) and HEAD", async () => {
  await withServer(async ({ url, upstream }) => {
    const bytes = randomBytes(100_000);
    const digest = upstream.addBlob(bytes);
    const path = `${url}/v2/library/x/blobs/${digest}`;
    const full = await fetch(path);
    assertEquals(full.status, 200);
    assertEquals(full.headers.get("content-length"), "100000");
    assertEquals(full.headers.get("docker-content-digest"), digest);
    assertEquals(full.headers.get("accept-ranges"), "bytes");
    assertEquals(new Uint8Array(await full.arrayBuffer()), bytes);

    const ranged = await fetch(path, { headers: { range: "bytes=10-19" } });
    assertEquals(ranged.status, 206);
    assertEquals(ranged.headers.get("content-range"), "bytes 10-19/100000");
    assertEquals(new Uint8Array(await ranged.arrayBuffer()), bytes.slice(10, 20));

    const suffix = await fetch(path, { headers: { range: "bytes=-5" } });
    assertEquals(new Uint8Array(await suffix.arrayBuffer()), bytes.slice(-5));

    const unsatisfiable = await fetch(path, { headers: { range: "bytes=100000-" } });
    assertEquals(unsatisfiable.status, 416);
    assertEquals(unsatisfiable.headers.get("content-range"), "bytes */100000");
    assertEquals((await errorOf(unsatisfiable)).code, "RANGE_INVALID");

    const head = await fetch(path, { method: "HEAD" });
    assertEquals(head.status, 200);
    assertEquals(head.headers.get("content-length"), "100000");
    await head.body?.cancel();
  });
});

Deno.test("bad input gets OCI JSON errors with the spec's status codes", async () => {
  await withServer(async ({ url }) => {
    const cases: [string, RequestInit, number, string][] = [
      ["/v2/Bad_Name/manifests/1", {}, 400, "NAME_INVALID"],
      ["/v2/x/manifests/sha256:abc", {}, 400, "DIGEST_INVALID"],
      ["/v2/x/blobs/sha256:zz", {}, 400, "DIGEST_INVALID"],
      ["/v2/x/blobs/notadigest", {}, 400, "DIGEST_INVALID"],
      ["/v2/x/manifests/bad!tag", {}, 404, "MANIFEST_UNKNOWN"],
      ["/v2/x/manifests/1?ns=not%20a%20host", {}, 400, "NAME_INVALID"],
      ["/v2/x/manifests/1", { method: "PUT", body: "{}" }, 405, "UNSUPPORTED"],
      ["/v2/x/manifests/1", { method: "DELETE" }, 405, "UNSUPPORTED"],
      ["/v2/x/blobs/uploads/", { method: "POST" }, 405, "UNSUPPORTED"],
      ["/v2/x/nothing/here", {}, 404, "NAME_UNKNOWN"],
      ["/v2/a/..%2f..%2fetc/manifests/passwd", {}, 400, "NAME_INVALID"],
      ["/v2/x/blobs/sha256:..%2f..%2f" + "a".repeat(58), {}, 400, "DIGEST_INVALID"],
    ];
    for (const [path, init, status, code] of cases) {
      const error = await errorOf(await fetch(`${url}${path}`, init));
      assertEquals(
        error,
        { status, code, type: "application/json" },
        `${init.method ?? "GET"} ${path}`,
      );
    }
  });
});

Deno.test("upstream failures map to 404, 429 and 503 with OCI bodies", async () => {
  await withServer(async ({ url, upstream }) => {
    const unknown = await errorOf(await fetch(`${url}/v2/library/x/manifests/1`));
    assertEquals([unknown.status, unknown.code], [404, "MANIFEST_UNKNOWN"]);
    upstream.failure = new RegistryError("TOOMANYREQUESTS", "slow down", {
      headers: { "retry-after": "30" },
    });
    const limited = await fetch(`${url}/v2/library/x/manifests/2`);
    assertEquals(limited.status, 429);
    assertEquals(limited.headers.get("retry-after"), "30");
    await limited.body?.cancel();
    upstream.failure = new RegistryError("UNAVAILABLE", "connection refused");
    const down = await errorOf(await fetch(`${url}/v2/library/x/blobs/sha256:${"a".repeat(64)}`));
    assertEquals([down.status, down.code], [503, "UNAVAILABLE"]);
  });
});

Deno.test("a client that accepts only Docker manifests never gets an OCI one", async () => {
  await withServer(async ({ url, upstream }) => {
    upstream.addManifest("oci", { ...manifest, mediaType: OCI_MANIFEST });
    const response = await fetch(`${url}/v2/library/x/manifests/oci`, {
      headers: { accept: DOCKER_MANIFEST },
    });
    const error = await errorOf(response);
    assertEquals([error.status, error.code], [404, "MANIFEST_UNKNOWN"]);
  });
});

Deno.test("tags/list pagination links point back at the mirror, keeping the prefix or ns", async () => {
  await withServer(async ({ url }) => {
    const page = await fetch(`${url}/v2/quay.io/org/app/tags/list?n=2`);
    assertEquals(await page.json(), { name: "org/app", tags: ["1", "2"] });
    const link = page.headers.get("link")!;
    assertEquals(link, `</v2/quay.io/org/app/tags/list?n=2&last=2>; rel="next"`);
    const next = await fetch(`${url}${/<([^>]+)>/.exec(link)![1]}`);
    assertEquals((await next.json()).tags, ["3"]);
    assertEquals(next.headers.get("link"), null);

    const byNs = await fetch(`${url}/v2/org/app/tags/list?n=1&ns=quay.io`);
    await byNs.body?.cancel();
    assertEquals(
      byNs.headers.get("link"),
      `</v2/org/app/tags/list?n=1&last=1&ns=quay.io>; rel="next"`,
    );
  });
});

Deno.test("GET /metrics counts requests, cache results and upstream requests", async () => {
  await withServer(async ({ url, mirror, upstream }) => {
    const digest = upstream.addBlob(randomBytes(1000));
    for (let i = 0; i < 3; i++) {
      const response = await fetch(`${url}/v2/library/x/blobs/${digest}`);
      await response.arrayBuffer();
      await mirror.settled(); // published: the next request is a hit
    }
    const text = await (await fetch(`${url}/metrics`)).text();
    const has = (line: string) => assert(text.split("\n").includes(line), `${line} in\n${text}`);
    has('oci_registry_http_requests_total{method="GET",endpoint="blobs",status="200"} 3');
    has('oci_registry_cache_requests_total{namespace="docker.io",kind="blob",result="miss"} 1');
    has('oci_registry_cache_requests_total{namespace="docker.io",kind="blob",result="hit"} 2');
    has('oci_registry_upstream_requests_total{namespace="docker.io",kind="blob",method="GET"} 1');
    upstream.addManifest("1", manifest);
    for (let i = 0; i < 2; i++) {
      await (await fetch(`${url}/v2/library/x/manifests/1`)).arrayBuffer();
    }
    const after = await (await fetch(`${url}/metrics`)).text();
    assert(
      after.includes(
        'oci_registry_cache_requests_total{namespace="docker.io",kind="manifest",result="miss"} 1',
      ),
      after,
    );
    assert(
      after.includes(
        'oci_registry_cache_requests_total{namespace="docker.io",kind="manifest",result="hit"} 1',
      ),
      after,
    );
    assert(/^process_resident_memory_bytes \d+$/m.test(text), text);
  });
});

Deno.test("one access-log line per request, without credentials", async () => {
  await withServer(async ({ url, logs }) => {
    const response = await fetch(`${url}/v2/`, {
      headers: { authorization: "Basic c2VjcmV0OnNlY3JldA==" },
    });
    await response.body?.cancel();
    const line = logs.find((l) => l.startsWith("GET /v2/ 200"));
    assert(line, logs.join("\n"));
    assert(!logs.join("\n").includes("c2VjcmV0"), "no credentials in logs");
  });
});

/** The series lines of a /metrics text (neither comments nor blank). */
function seriesOf(text: string): string[] {
  return text.split("\n").filter((line) => line !== "" && !line.startsWith("#"));
}

Deno.test("metrics: invented methods, paths and namespaces add no series", async () => {
  await withServer(async ({ url, port, upstream }) => {
    const digest = upstream.addBlob(randomBytes(10));
    upstream.addManifest("1", manifest);
    const round = async (i: number) => {
      const requests: [string, RequestInit][] = [
        [`/v2/`, { method: `INVENTED${i}` }],
        [`/some/path/${i}`, {}],
        [`/v2/x${i}/nothing/${i}`, {}],
        [`/v2/library/x/manifests/1?ns=ns${i}.example`, {}],
        [`/v2/r${i}.example/library/x/manifests/1`, {}],
        [`/v2/r${i}.example/library/x/blobs/${digest}`, {}],
        [`/v2/library/x/tags/list?ns=t${i}.example`, {}],
      ];
      for (const [path, init] of requests) await (await fetch(url + path, init)).arrayBuffer();
      // fetch() upper-cases "get"; a raw socket sends it as written (methods are case-sensitive).
      await rawRequest(port, `get /v2/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n`);
    };
    // Two rounds first, so that every series the later ones can reach exists (the second
    // round finds the blob cached).
    await round(0);
    await round(1);
    const before = seriesOf(await (await fetch(`${url}/metrics`)).text());
    for (let i = 2; i < 302; i++) await round(i);
    const text = await (await fetch(`${url}/metrics`)).text();
    const after = seriesOf(text);
    const names = (series: string[]) => series.map((line) => line.replace(/ [^ ]+$/, "")).sort();
    // The /metrics GET itself adds one series between the two snapshots; nothing else may.
    assertEquals(
      names(after).filter((n) => !n.includes('endpoint="metrics"')),
      names(before).filter((n) => !n.includes('endpoint="metrics"')),
    );
    assertEquals(after.length, before.length + 1);
    const has = (line: string) => assert(after.includes(line), `${line} in\n${text}`);
    has('oci_registry_http_requests_total{method="other",endpoint="ping",status="405"} 604');
    has('oci_registry_http_requests_total{method="GET",endpoint="other",status="404"} 604');
    has('oci_registry_upstream_requests_total{namespace="other",kind="manifest",method="GET"} 604');
    has('oci_registry_upstream_requests_total{namespace="other",kind="tags",method="GET"} 302');
    assert(text.length < 4096, `/metrics is ${text.length} bytes`);
  });
});

const close = "Connection: close\r\n";

Deno.test("routing reads the request target only: Host never changes what is served", async () => {
  await withServer(async ({ port }) => {
    // This Host used to turn request.url into http://x/metrics#/v2/ and serve /metrics.
    const hashHost = await rawRequest(
      port,
      `GET /v2/ HTTP/1.1\r\nHost: x/metrics#\r\n${close}\r\n`,
    );
    assertEquals(hashHost.status, 400);
    assertEquals(JSON.parse(hashHost.body).errors[0].code, "BAD_REQUEST");
    // Absolute form: request.url takes the target's authority; the path is what routes.
    const absolute = await rawRequest(
      port,
      `GET http://other.example/v2/ HTTP/1.1\r\nHost: a\r\n${close}\r\n`,
    );
    assertEquals([absolute.status, absolute.body], [200, "{}"]);
    const absoluteMetrics = await rawRequest(
      port,
      `GET http://a/metrics HTTP/1.1\r\nHost: a/metrics\r\n${close}\r\n`,
    );
    assertEquals(absoluteMetrics.status, 400);
    // Dot segments and backslashes are not resolved into another route.
    for (const target of ["/v2/../metrics", "/v2/%2e%2e/metrics", "/v2\\..\\metrics"]) {
      const answer = await rawRequest(port, `GET ${target} HTTP/1.1\r\nHost: a\r\n${close}\r\n`);
      assertEquals(answer.status, 404, target);
      assertEquals(JSON.parse(answer.body).errors[0].code, "NAME_UNKNOWN", target);
    }
  });
});

Deno.test("malformed requests the handler sees get OCI JSON 400/414/431, a log line and a metric", async () => {
  await withServer(async ({ port, logs, metrics }) => {
    const enc = new TextEncoder();
    const withByte = (before: string, byte: number, after: string) =>
      new Uint8Array([...enc.encode(before), byte, ...enc.encode(after)]);
    const cases: [string, string | Uint8Array, number, string][] = [
      ["Host with a space", `GET /v2/ HTTP/1.1\r\nHost: a b\r\n${close}\r\n`, 400, "BAD_REQUEST"],
      ["Host [", `GET /v2/ HTTP/1.1\r\nHost: [\r\n${close}\r\n`, 400, "BAD_REQUEST"],
      ["Host a:b", `GET /v2/ HTTP/1.1\r\nHost: a:b\r\n${close}\r\n`, 400, "BAD_REQUEST"],
      ["Host with a tab", `GET /v2/ HTTP/1.1\r\nHost: a\tb\r\n${close}\r\n`, 400, "BAD_REQUEST"],
      [
        "non-ASCII Host",
        withByte("GET /v2/ HTTP/1.1\r\nHost: a", 0xff, `\r\n${close}\r\n`),
        400,
        "BAD_REQUEST",
      ],
      [
        "target over the limit",
        `GET /v2/${"a".repeat(MAX_TARGET_BYTES)} HTTP/1.1\r\nHost: a\r\n${close}\r\n`,
        414,
        "URI_TOO_LONG",
      ],
      [
        "headers over the limit",
        `GET /v2/ HTTP/1.1\r\nHost: a\r\nX-Big: ${"a".repeat(MAX_HEADER_BYTES)}\r\n${close}\r\n`,
        431,
        "HEADERS_TOO_LARGE",
      ],
      [
        "bad escape in the path",
        `GET /v2/x/manifests/%zz HTTP/1.1\r\nHost: a\r\n${close}\r\n`,
        400,
        "BAD_REQUEST",
      ],
      [
        "escape that is not UTF-8",
        `GET /v2/x/blobs/sha256%3A%FF HTTP/1.1\r\nHost: a\r\n${close}\r\n`,
        400,
        "BAD_REQUEST",
      ],
      [
        "bad escape in the query",
        `GET /v2/x/manifests/1?ns=%z HTTP/1.1\r\nHost: a\r\n${close}\r\n`,
        400,
        "BAD_REQUEST",
      ],
      ["fragment", `GET /v2/#x HTTP/1.1\r\nHost: a\r\n${close}\r\n`, 400, "BAD_REQUEST"],
      ["CONNECT", `CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n${close}\r\n`, 400, "BAD_REQUEST"],
      ["OPTIONS *", `OPTIONS * HTTP/1.1\r\nHost: a\r\n${close}\r\n`, 404, "NAME_UNKNOWN"],
      ["invented method", `BREW /v2/ HTTP/1.1\r\nHost: a\r\n${close}\r\n`, 405, "UNSUPPORTED"],
    ];
    for (const [what, request, status, code] of cases) {
      const before = logs.length;
      const answer = await rawRequest(port, request);
      assertEquals(answer.status, status, what);
      assertEquals(answer.headers.get("content-type"), "application/json", what);
      assertEquals(JSON.parse(answer.body).errors[0].code, code, what);
      assertEquals(logs.length, before + 1, `${what}: one access-log line\n${logs.join("\n")}`);
      assert(logs.at(-1)!.includes(` ${status} `), logs.at(-1)!);
    }
    const counted = seriesOf(metrics.render())
      .filter((line) => line.startsWith("oci_registry_http_requests_total"))
      .reduce((sum, line) => sum + Number(line.split(" ").at(-1)), 0);
    assertEquals(counted, cases.length);
    // A HEAD gets the status and headers without a body.
    const head = await rawRequest(port, `HEAD /v2/ HTTP/1.1\r\nHost: a b\r\n${close}\r\n`);
    assertEquals([head.status, head.body], [400, ""]);
  });
});

Deno.test("what Deno.serve rejects before the handler: a bare 400, no log line, no metric", async () => {
  // Documents the server's own limits (Deno 2.9.6, hyper): if these change, the comment at the
  // top of server.ts and MAX_TARGET_BYTES / MAX_HEADER_BYTES need a look.
  await withServer(async ({ port, logs, metrics }) => {
    const enc = new TextEncoder();
    const cases: [string, string | Uint8Array][] = [
      ["head over 64 KiB", `GET /${"a".repeat(65 << 10)} HTTP/1.1\r\nHost: a\r\n\r\n`],
      [
        "129 header lines",
        `GET / HTTP/1.1\r\nHost: a\r\n${"X: v\r\n".repeat(128)}\r\n`,
      ],
      ["two Host headers", `GET /v2/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n`],
      ["control byte in Host", `GET /v2/ HTTP/1.1\r\nHost: a\x01b\r\n\r\n`],
      [
        "non-ASCII target",
        new Uint8Array([
          ...enc.encode("GET /v2/"),
          0xff,
          ...enc.encode(" HTTP/1.1\r\nHost: a\r\n\r\n"),
        ]),
      ],
      ["malformed method", `G(T /v2/ HTTP/1.1\r\nHost: a\r\n\r\n`],
      ["target without a slash", `GET v2 HTTP/1.1\r\nHost: a\r\n\r\n`],
      ["bad Content-Length", `POST /v2/ HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n`],
      [
        "Content-Length and Transfer-Encoding",
        `POST /v2/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
      ],
      ["HTTP/1.2", `GET /v2/ HTTP/1.2\r\nHost: a\r\n\r\n`],
    ];
    for (const [what, request] of cases) {
      const answer = await rawRequest(port, request);
      assertEquals([answer.status, answer.body], [400, ""], what);
    }
    assertEquals(logs, []);
    assertEquals(metrics.requests.get({ method: "GET", endpoint: "other", status: "400" }), 0);
    assertEquals(seriesOf(metrics.requests.render()), []);
  });
});

Deno.test("X-Cache says what the cache did, and the access log line says it too", async () => {
  await withServer(async ({ url, upstream, logs, mirror }) => {
    const blob = upstream.addBlob(randomBytes(1000));
    upstream.addManifest("1", {
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: blob, size: 1000 },
      layers: [],
    });
    const get = async (path: string) => {
      const response = await fetch(`${url}${path}`, { headers: { accept: OCI_MANIFEST } });
      await response.body?.cancel();
      return response.headers.get("x-cache");
    };
    assertEquals(await get("/v2/library/app/manifests/1"), "miss");
    assertEquals(await get("/v2/library/app/manifests/1"), "hit");
    assertEquals(await get(`/v2/library/app/blobs/${blob}`), "miss");
    await mirror.settled(); // published: the next GET reads the store, not the download
    assertEquals(await get(`/v2/library/app/blobs/${blob}`), "hit");
    assert(
      logs.some((l) =>
        /^GET \/v2\/library\/app\/manifests\/1 200 \d+ [\d.]+ms docker\.io hit$/.test(l)
      ),
      logs.join("\n"),
    );
    assertEquals(await get("/v2/"), null, "only cache lookups say anything");
    // The blob was answered once from upstream and once from the cache; upstream was timed.
    const metrics = await (await fetch(`${url}/metrics`)).text();
    assert(metrics.includes('oci_registry_served_bytes_total{source="upstream"} 1000'), metrics);
    assert(metrics.includes('oci_registry_served_bytes_total{source="cache"} 1000'), metrics);
    assert(
      /^oci_registry_upstream_response_seconds_total\{namespace="docker\.io",kind="blob"\} \d/m
        .test(metrics),
      metrics,
    );
  });
});
