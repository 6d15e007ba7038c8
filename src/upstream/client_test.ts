import assert from "node:assert/strict";
import { defaultUpstream, type UpstreamConfig, UpstreamRegistry } from "../config/upstreams.ts";
import { RegistryError } from "../oci/errors.ts";
import { UpstreamClient, type UpstreamClientOptions } from "./client.ts";
import { freePort } from "../../tests/support/tools.ts";

const MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json";
const MANIFEST = JSON.stringify({ schemaVersion: 2, mediaType: MANIFEST_TYPE, layers: [] });
const DIGEST = "sha256:" + "a".repeat(64);

interface Seen {
  method: string;
  path: string;
  search: URLSearchParams;
  headers: Headers;
}

/** An in-process fake server on 127.0.0.1 that records every request it sees. */
function fake(handler: (request: Request, url: URL) => Response | Promise<Response>, tls?: {
  cert: string;
  key: string;
}) {
  const seen: Seen[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {}, ...(tls ?? {}) },
    (request) => {
      const url = new URL(request.url);
      seen.push({
        method: request.method,
        path: url.pathname,
        search: url.searchParams,
        headers: request.headers,
      });
      return handler(request, url);
    },
  );
  return {
    seen,
    host: `127.0.0.1:${server.addr.port}`,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

function upstreams(host: string, extra: Partial<UpstreamConfig> = {}): UpstreamRegistry {
  return new UpstreamRegistry([{
    ...defaultUpstream("registry.test"),
    host,
    tls: false,
    configured: true,
    ...extra,
  }]);
}

/** Retries as in production, only with millisecond delays. */
const FAST_RETRIES = { retries: 3, budgetMs: 2_000, baseDelayMs: 5, maxDelayMs: 20 };

function client(registry: UpstreamRegistry, options: UpstreamClientOptions = {}) {
  const c = new UpstreamClient(registry, { retry: FAST_RETRIES, ...options });
  return Object.assign(c, { [Symbol.dispose]: () => c.close() });
}

async function rejects(promise: Promise<unknown>, code: string): Promise<RegistryError> {
  try {
    const value = await promise;
    if (value instanceof Response) await value.body?.cancel();
  } catch (e) {
    assert.ok(e instanceof RegistryError, `expected RegistryError, got ${e}`);
    assert.equal(e.code, code, e.message);
    return e;
  }
  assert.fail(`expected ${code}, but the call succeeded`);
}

function getManifest(c: UpstreamClient, repository = "library/alpine", reference = "3.19") {
  return c.manifest("registry.test", repository, reference, {
    method: "GET",
    accept: [MANIFEST_TYPE, "application/vnd.oci.image.index.v1+json"],
  });
}

/** A token server plus a registry demanding `Bearer <token>` from it. */
function bearerPair(options: {
  tokenBody?: (n: number) => Record<string, unknown>;
  credentials?: string;
  /** False: issue tokens the registry does not accept. */
  honour?: () => boolean;
  registry?: (request: Request, url: URL) => Response | Promise<Response>;
} = {}) {
  let issued = 0;
  const valid = new Set<string>();
  const tokens = fake((request, url) => {
    if (options.credentials !== undefined) {
      if (request.headers.get("authorization") !== options.credentials) {
        return new Response("no", { status: 401 });
      }
    }
    issued++;
    const token = `tok-${issued}-${url.searchParams.get("scope")}`;
    if (options.honour?.() ?? true) valid.add(token);
    return Response.json(options.tokenBody?.(issued) ?? { token, expires_in: 300 });
  });
  const registry = fake((request, url) => {
    const auth = request.headers.get("authorization") ?? "";
    if (!valid.has(auth.replace(/^Bearer /, ""))) {
      const repo = url.pathname.split("/").slice(2, -2).join("/");
      return new Response(JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "auth" }] }), {
        status: 401,
        headers: {
          "www-authenticate": `Bearer realm="http://${tokens.host}/token",` +
            `service="fake registry",scope="repository:${repo}:pull,push"`,
        },
      });
    }
    if (options.registry) return options.registry(request, url);
    return new Response(request.method === "HEAD" ? null : MANIFEST, {
      headers: { "content-type": MANIFEST_TYPE, "docker-content-digest": DIGEST },
    });
  });
  return {
    tokens,
    registry,
    valid,
    get issued() {
      return issued;
    },
  };
}

Deno.test("anonymous bearer flow: one token request serves repeated fetches of a repository", async () => {
  const pair = bearerPair();
  await using _t = pair.tokens;
  await using _r = pair.registry;
  using c = client(upstreams(pair.registry.host));

  const first = await getManifest(c);
  assert.equal(first.status, 200);
  assert.equal(first.headers.get("docker-content-digest"), DIGEST);
  assert.equal(await first.text(), MANIFEST);
  const second = await getManifest(c);
  assert.equal(await second.text(), MANIFEST);

  assert.equal(pair.issued, 1);
  const tokenRequest = pair.tokens.seen[0];
  assert.equal(tokenRequest.search.get("scope"), "repository:library/alpine:pull");
  assert.equal(tokenRequest.search.get("service"), "fake registry");
  assert.equal(tokenRequest.headers.get("authorization"), null);
  // 401, retry with token, then the token sent up front: 3 registry requests in all.
  assert.equal(pair.registry.seen.length, 3);
  assert.equal(pair.registry.seen[0].headers.get("authorization"), null);
  assert.match(pair.registry.seen[2].headers.get("authorization")!, /^Bearer tok-1-/);
  const headers = pair.registry.seen[2].headers;
  assert.equal(headers.get("user-agent"), "oci-registry/0.1");
  assert.equal(
    headers.get("accept"),
    `${MANIFEST_TYPE}, application/vnd.oci.image.index.v1+json`,
  );
  assert.equal(pair.registry.seen[2].path, "/v2/library/alpine/manifests/3.19");

  // Another repository needs its own scope.
  await (await getManifest(c, "library/busybox")).body?.cancel();
  assert.equal(pair.issued, 2);
  assert.equal(pair.tokens.seen[1].search.get("scope"), "repository:library/busybox:pull");
});

Deno.test("concurrent requests for one scope share a single token request", async () => {
  const pair = bearerPair();
  await using _t = pair.tokens;
  await using _r = pair.registry;
  using c = client(upstreams(pair.registry.host));
  const responses = await Promise.all(Array.from({ length: 6 }, () => getManifest(c)));
  for (const response of responses) assert.equal(await response.text(), MANIFEST);
  assert.equal(pair.issued, 1);
});

Deno.test("an expired token is not reused: a new one is requested (access_token form)", async () => {
  const pair = bearerPair({
    tokenBody: (n) => ({ access_token: `short-${n}`, expires_in: 1 }),
  });
  await using _t = pair.tokens;
  await using _r = pair.registry;
  pair.valid.add("short-1");
  pair.valid.add("short-2");
  using c = client(upstreams(pair.registry.host));
  await (await getManifest(c)).body?.cancel();
  await (await getManifest(c)).body?.cancel();
  assert.equal(pair.issued, 1);
  await new Promise((resolve) => setTimeout(resolve, 1000));
  await (await getManifest(c)).body?.cancel();
  assert.equal(pair.issued, 2);
  // The expired token was not sent up front: the request after expiry went out anonymous.
  assert.equal(pair.registry.seen.at(-2)!.headers.get("authorization"), null);
  assert.equal(pair.registry.seen.at(-1)!.headers.get("authorization"), "Bearer short-2");
});

Deno.test("a token upstream stops accepting is replaced once; a second 401 is final", async () => {
  let rejectAll = false;
  const pair = bearerPair({ honour: () => !rejectAll });
  await using _t = pair.tokens;
  await using _r = pair.registry;
  using c = client(upstreams(pair.registry.host));
  await (await getManifest(c)).body?.cancel();
  assert.equal(pair.issued, 1);

  pair.valid.clear(); // upstream revokes its tokens: the cached one gets a 401
  const before = pair.registry.seen.length;
  assert.equal(await (await getManifest(c)).text(), MANIFEST);
  assert.equal(pair.issued, 2);
  assert.equal(pair.registry.seen.length - before, 2);

  rejectAll = true; // even a fresh token is refused: one retry, then an error
  pair.valid.clear();
  const error = await rejects(getManifest(c), "UPSTREAM_ERROR");
  assert.equal(pair.issued, 3);
  assert.match(error.message, /refused the mirror access to library\/alpine/);
  assert.doesNotMatch(error.message, /tok-/);
});

Deno.test("configured credentials go to the token realm as Basic, never to the registry", async () => {
  const expected = "Basic " + btoa("mirror:s3cret");
  const pair = bearerPair({ credentials: expected });
  await using _t = pair.tokens;
  await using _r = pair.registry;
  using c = client(upstreams(pair.registry.host, { username: "mirror", password: "s3cret" }));
  assert.equal(await (await getManifest(c)).text(), MANIFEST);
  assert.equal(pair.tokens.seen[0].headers.get("authorization"), expected);
  for (const seen of pair.registry.seen) {
    assert.doesNotMatch(seen.headers.get("authorization") ?? "", /^Basic/);
  }
});

Deno.test("a token server rejecting the credentials is UPSTREAM_ERROR without the password", async () => {
  const pair = bearerPair({ credentials: "Basic something-else" });
  await using _t = pair.tokens;
  await using _r = pair.registry;
  using c = client(upstreams(pair.registry.host, { username: "mirror", password: "s3cret" }));
  const error = await rejects(getManifest(c), "UPSTREAM_ERROR");
  assert.match(error.message, /rejected the mirror's credentials/);
  assert.doesNotMatch(error.message, /s3cret|mirror:/);
});

Deno.test("Basic challenge: credentials are sent, then sent up front", async () => {
  // RFC 7617: the user-pass is encoded as UTF-8 before base64.
  const utf8 = new TextEncoder().encode("user:pässword");
  const expected = "Basic " + btoa(String.fromCharCode(...utf8));
  await using registry = fake((request) => {
    if (request.headers.get("authorization") !== expected) {
      return new Response(null, {
        status: 401,
        headers: { "www-authenticate": 'Basic realm="Registry Realm"' },
      });
    }
    return new Response(MANIFEST, { headers: { "content-type": MANIFEST_TYPE } });
  });
  using c = client(upstreams(registry.host, { username: "user", password: "pässword" }));
  assert.equal(await (await getManifest(c)).text(), MANIFEST);
  assert.equal(await (await getManifest(c)).text(), MANIFEST);
  assert.deepEqual(
    registry.seen.map((s) => s.headers.get("authorization")),
    [null, expected, expected],
  );

  using wrong = client(upstreams(registry.host, { username: "user", password: "nope" }));
  const error = await rejects(getManifest(wrong), "UPSTREAM_ERROR");
  assert.match(error.message, /rejected the mirror's credentials/);
  assert.doesNotMatch(error.message, /nope/);

  using anonymous = client(upstreams(registry.host));
  const anonymousError = await rejects(getManifest(anonymous), "UPSTREAM_ERROR");
  assert.match(anonymousError.message, /requires credentials/);
});

Deno.test("upstream status codes map to OCI errors", async () => {
  let status = 404;
  await using registry = fake(() =>
    new Response(
      JSON.stringify({ errors: [{ code: "X", message: "upstream says\nno" }] }),
      { status, headers: status === 429 ? { "retry-after": "17" } : {} },
    )
  );
  using c = client(upstreams(registry.host));

  let error = await rejects(getManifest(c), "MANIFEST_UNKNOWN");
  assert.equal(error.status, 404);
  assert.match(error.message, new RegExp(`upstream ${registry.host} says manifest`));
  assert.match(error.message, /upstream says no/);
  await rejects(
    c.blob("registry.test", "library/alpine", DIGEST, { method: "GET" }),
    "BLOB_UNKNOWN",
  );
  await rejects(
    c.blob("registry.test", "library/alpine", DIGEST, { method: "HEAD" }),
    "BLOB_UNKNOWN",
  );
  await rejects(c.tags("registry.test", "library/alpine", new URLSearchParams()), "NAME_UNKNOWN");

  status = 500;
  error = await rejects(getManifest(c), "UPSTREAM_ERROR");
  assert.equal(error.status, 502);
  status = 503;
  await rejects(getManifest(c), "UPSTREAM_ERROR");
  status = 403;
  error = await rejects(getManifest(c), "DENIED");
  assert.equal(error.status, 403);
  status = 400;
  await rejects(getManifest(c), "UPSTREAM_ERROR");
  status = 401; // no challenge at all
  await rejects(getManifest(c), "UPSTREAM_ERROR");
});

Deno.test("connection refused is UNAVAILABLE, promptly, naming the host", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const host = `127.0.0.1:${listener.addr.port}`;
  listener.close();
  using c = client(upstreams(host, { username: "u", password: "topsecret" }));
  const started = performance.now();
  const error = await rejects(getManifest(c), "UNAVAILABLE");
  assert.ok(performance.now() - started < 2000);
  assert.equal(error.status, 503);
  assert.match(error.message, new RegExp(`upstream ${host}: connection refused`));
  assert.doesNotMatch(error.message, /topsecret/);
});

Deno.test("a port fetch refuses is UNAVAILABLE saying so, not a vague connection failure", async () => {
  // Config load rejects such hosts; an implicit upstream (a client's `?ns=`) can still name one.
  using c = client(upstreams("127.0.0.1:6000"), { allowPrivateAddresses: true });
  const error = await rejects(getManifest(c), "UNAVAILABLE");
  assert.match(error.message, /port 6000 is one that fetch refuses to connect to/);
});

Deno.test("no response within connectTimeoutMs is UNAVAILABLE", async () => {
  // The kernel completes the TCP handshake, but nobody ever answers.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    using c = client(upstreams(`127.0.0.1:${listener.addr.port}`), { connectTimeoutMs: 200 });
    const started = performance.now();
    const error = await rejects(getManifest(c), "UNAVAILABLE");
    assert.ok(performance.now() - started < 2000);
    assert.match(error.message, /no response within 0.2s/);
  } finally {
    listener.close();
  }
});

Deno.test("the caller's signal aborts a request", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    using c = client(upstreams(`127.0.0.1:${listener.addr.port}`));
    const controller = new AbortController();
    const pending = c.manifest("registry.test", "library/alpine", "3.19", {
      method: "HEAD",
      accept: [],
      signal: controller.signal,
    });
    setTimeout(() => controller.abort(), 50);
    await assert.rejects(pending, (e: Error) => e.name === "AbortError");
  } finally {
    listener.close();
  }
});

Deno.test("redirects: Authorization is dropped for another host, kept on the same host", async () => {
  const blob = new Uint8Array(100_000).fill(7);
  await using storage = fake((_request, url) =>
    url.searchParams.get("sig") === "abc"
      ? new Response(blob, { headers: { "content-type": "application/octet-stream" } })
      : new Response("bad signature", { status: 403 })
  );
  const pair = bearerPair({
    registry: (_request, url) => {
      if (url.pathname.includes("/blobs/")) {
        return new Response(null, {
          status: 307,
          headers: { location: `http://${storage.host}/data/blob?sig=abc` },
        });
      }
      // Same-host relative redirect for manifests.
      if (url.pathname.endsWith("/manifests/moved")) {
        return new Response(null, { status: 302, headers: { location: "3.19" } });
      }
      return new Response(MANIFEST);
    },
  });
  await using _t = pair.tokens;
  await using _r = pair.registry;
  using c = client(upstreams(pair.registry.host));

  const response = await c.blob("registry.test", "library/alpine", DIGEST, {
    method: "GET",
    range: "bytes=0-",
  });
  assert.equal(response.status, 200);
  assert.deepEqual(new Uint8Array(await response.arrayBuffer()), blob);
  assert.equal(storage.seen.length, 1);
  assert.equal(storage.seen[0].headers.get("authorization"), null);
  assert.equal(storage.seen[0].headers.get("range"), "bytes=0-");
  assert.equal(storage.seen[0].search.get("sig"), "abc");
  assert.match(pair.registry.seen.at(-1)!.headers.get("authorization")!, /^Bearer /);

  assert.equal(await (await getManifest(c, "library/alpine", "moved")).text(), MANIFEST);
  const last = pair.registry.seen.at(-1)!;
  assert.equal(last.path, "/v2/library/alpine/manifests/3.19");
  assert.match(last.headers.get("authorization")!, /^Bearer /);
});

Deno.test("redirect loops stop after 5 hops; errors from a redirect target are not DENIED", async () => {
  await using loop = fake((_request, url) =>
    url.pathname.startsWith("/v2/")
      ? new Response(null, { status: 302, headers: { location: "/hop?1" } })
      : new Response(null, { status: 302, headers: { location: `/hop${url.search}1` } })
  );
  using c = client(upstreams(loop.host));
  const error = await rejects(getManifest(c), "UPSTREAM_ERROR");
  assert.match(error.message, /more than 5 redirects/);
  assert.equal(loop.seen.length, 6);

  await using storage = fake(() => new Response("expired", { status: 403 }));
  await using registry = fake(() =>
    new Response(null, { status: 307, headers: { location: `http://${storage.host}/x` } })
  );
  using c2 = client(upstreams(registry.host));
  const denied = await rejects(
    c2.blob("registry.test", "library/alpine", DIGEST, { method: "GET" }),
    "UPSTREAM_ERROR",
  );
  assert.match(denied.message, new RegExp(`${storage.host} \\(for upstream ${registry.host}\\)`));
});

Deno.test("a stalled body errors with UNAVAILABLE after idleTimeoutMs", async () => {
  let serverCancelled = false;
  const cancelledPromise = Promise.withResolvers<void>();
  await using registry = fake(() =>
    new Response(
      new ReadableStream({
        start(controller) {
          controller.enqueue(new TextEncoder().encode("first chunk"));
        },
        cancel() {
          serverCancelled = true;
          cancelledPromise.resolve();
        },
      }),
    )
  );
  using c = client(upstreams(registry.host), { idleTimeoutMs: 300 });
  const response = await c.blob("registry.test", "library/alpine", DIGEST, { method: "GET" });
  const reader = response.body!.getReader();
  const first = await reader.read();
  assert.equal(new TextDecoder().decode(first.value), "first chunk");
  const started = performance.now();
  await assert.rejects(reader.read(), (e: unknown) => {
    assert.ok(e instanceof RegistryError);
    assert.equal(e.code, "UNAVAILABLE");
    assert.match(e.message, /stalled: no data for 0.3s/);
    return true;
  });
  assert.ok(performance.now() - started >= 250);
  await cancelledPromise.promise;
  assert.ok(serverCancelled);
});

Deno.test("a slow consumer does not trip the idle timeout", async () => {
  await using registry = fake(() => new Response(new Uint8Array(200_000).fill(1)));
  using c = client(upstreams(registry.host), { idleTimeoutMs: 100 });
  const response = await c.blob("registry.test", "library/alpine", DIGEST, { method: "GET" });
  const reader = response.body!.getReader();
  let total = 0;
  while (true) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    await new Promise((resolve) => setTimeout(resolve, 150));
  }
  assert.equal(total, 200_000);
});

Deno.test("HEAD, Range and tag list requests", async () => {
  await using registry = fake((request, url) => {
    if (url.pathname.endsWith("/tags/list")) {
      return Response.json({ name: "library/alpine", tags: ["3.19", "3.20"] });
    }
    if (url.pathname.includes("/blobs/")) {
      return new Response("bcd", {
        status: 206,
        headers: { "content-range": "bytes 1-3/10" },
      });
    }
    return new Response(request.method === "HEAD" ? null : MANIFEST, {
      headers: { "docker-content-digest": DIGEST, "content-length": String(MANIFEST.length) },
    });
  });
  using c = client(upstreams(registry.host, { userAgent: "custom-agent/2" }));

  const head = await c.manifest("registry.test", "library/alpine", DIGEST, {
    method: "HEAD",
    accept: [MANIFEST_TYPE],
  });
  assert.equal(head.status, 200);
  assert.equal(head.body, null);
  assert.equal(head.headers.get("docker-content-digest"), DIGEST);
  assert.equal(registry.seen[0].method, "HEAD");
  assert.equal(registry.seen[0].path, `/v2/library/alpine/manifests/${DIGEST}`);
  assert.equal(registry.seen[0].headers.get("user-agent"), "custom-agent/2");

  const range = await c.blob("registry.test", "library/alpine", DIGEST, {
    method: "GET",
    range: "bytes=1-3",
  });
  assert.equal(range.status, 206);
  assert.equal(range.headers.get("content-range"), "bytes 1-3/10");
  assert.equal(await range.text(), "bcd");
  assert.equal(registry.seen[1].headers.get("range"), "bytes=1-3");

  const tags = await c.tags(
    "registry.test",
    "library/alpine",
    new URLSearchParams({ n: "2", last: "3.1", ns: "registry.test" }),
  );
  assert.deepEqual(await tags.json(), { name: "library/alpine", tags: ["3.19", "3.20"] });
  assert.equal(registry.seen[2].search.toString(), "n=2&last=3.1");
});

Deno.test("invalid names never reach upstream", async () => {
  using c = client(upstreams("127.0.0.1:9"));
  await rejects(getManifest(c, "library/../../admin"), "NAME_INVALID");
  await rejects(getManifest(c, "library/alpine", "../x"), "MANIFEST_INVALID");
  await rejects(
    c.blob("registry.test", "library/alpine", "sha256:../../x", { method: "GET" }),
    "DIGEST_INVALID",
  );
  using implicit = client(new UpstreamRegistry([]));
  await rejects(
    implicit.manifest("user:pass@evil.test", "a", "b", { method: "GET", accept: [] }),
    "NAME_INVALID",
  );
});

Deno.test("implicit upstreams on private addresses are refused before any connection", async () => {
  await using registry = fake(() => new Response(MANIFEST));
  using c = client(new UpstreamRegistry([]));
  // An implicit upstream named by a client (?ns=) pointing at our own fake server.
  const error = await rejects(
    c.manifest(registry.host, "library/alpine", "3.19", { method: "GET", accept: [] }),
    "DENIED",
  );
  assert.equal(error.status, 403);
  assert.match(error.message, /127\.0\.0\.1 is not allowed: loopback/);
  await rejects(
    c.manifest("10.1.2.3", "library/alpine", "3.19", { method: "GET", accept: [] }),
    "DENIED",
  );
  await rejects(
    c.manifest("localhost:5000", "library/alpine", "3.19", { method: "GET", accept: [] }),
    "DENIED",
  );
  await rejects(
    c.manifest("[::1]:5000", "library/alpine", "3.19", { method: "GET", accept: [] }),
    "DENIED",
  );
  assert.equal(registry.seen.length, 0);

  // allowPrivateAddresses lifts the restriction (an unconfigured entry stands in for an
  // implicit upstream, on plain http so the fake server can answer).
  const unconfigured = new UpstreamRegistry([{
    ...defaultUpstream("registry.test"),
    host: registry.host,
    tls: false,
    configured: false,
  }]);
  using refused = client(unconfigured);
  await rejects(getManifest(refused), "DENIED");
  using allowed = client(unconfigured, { allowPrivateAddresses: true });
  assert.equal(await (await getManifest(allowed)).text(), MANIFEST);
});

Deno.test("every hop of an implicit upstream passes the address policy", async () => {
  await using internal = fake(() => new Response("secret metadata"));
  await using registry = fake(() =>
    new Response(null, { status: 302, headers: { location: `http://${internal.host}/latest` } })
  );
  const checked: string[] = [];
  // Stands in for DNS: the registry's port counts as public, everything else as private.
  const addressPolicy = {
    check(url: URL): Promise<void> {
      checked.push(url.host);
      return url.host === registry.host
        ? Promise.resolve()
        : Promise.reject(new RegistryError("DENIED", `${url.hostname} is not allowed`));
    },
  };
  const unconfigured = new UpstreamRegistry([{
    ...defaultUpstream("registry.test"),
    host: registry.host,
    tls: false,
    configured: false,
  }]);
  using c = client(unconfigured, { addressPolicy });
  await rejects(getManifest(c), "DENIED");
  assert.deepEqual(checked, [registry.host, internal.host]);
  assert.equal(registry.seen.length, 1);
  assert.equal(internal.seen.length, 0);

  // A token realm named by an implicit upstream is checked as well.
  await using challenging = fake(() =>
    new Response(null, {
      status: 401,
      headers: { "www-authenticate": `Bearer realm="http://${internal.host}/token"` },
    })
  );
  checked.length = 0;
  using c2 = client(
    new UpstreamRegistry([{
      ...defaultUpstream("registry.test"),
      host: challenging.host,
      tls: false,
      configured: false,
    }]),
    {
      addressPolicy: {
        check: (url) =>
          url.host === challenging.host ? Promise.resolve() : addressPolicy.check(url),
      },
    },
  );
  await rejects(getManifest(c2), "DENIED");
  assert.equal(internal.seen.length, 0);
  assert.equal(challenging.seen.length, 1);

  // Configured upstreams are trusted: the policy is not consulted.
  checked.length = 0;
  using trusted = client(upstreams(registry.host), { addressPolicy });
  assert.equal(await (await getManifest(trusted)).text(), "secret metadata");
  assert.deepEqual(checked, []);
});

async function selfSignedCertificate(): Promise<{ cert: string; key: string }> {
  const dir = await Deno.makeTempDir();
  try {
    const output = await new Deno.Command("openssl", {
      args: [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        `${dir}/key.pem`,
        "-out",
        `${dir}/cert.pem`,
        "-days",
        "1",
        "-subj",
        "/CN=elsewhere.test",
        "-addext",
        // Self-signed AND for another name: verification would fail on two counts.
        "subjectAltName=DNS:elsewhere.test",
      ],
      stdout: "null",
      stderr: "piped",
    }).output();
    if (!output.success) throw new Error(new TextDecoder().decode(output.stderr));
    return {
      cert: await Deno.readTextFile(`${dir}/cert.pem`),
      key: await Deno.readTextFile(`${dir}/key.pem`),
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("self-signed HTTPS: accepted with accept_invalid_certs, refused without", async () => {
  const tls = await selfSignedCertificate();
  const pair = { tokens: 0 };
  await using registry = fake((request, url) => {
    if (url.pathname === "/token") {
      pair.tokens++;
      return Response.json({ token: "tls-token" });
    }
    if (request.headers.get("authorization") !== "Bearer tls-token") {
      return new Response(null, {
        status: 401,
        headers: { "www-authenticate": `Bearer realm="https://${url.host}/token"` },
      });
    }
    if (url.pathname.includes("/blobs/")) {
      return new Response(new Uint8Array(300_000).fill(9));
    }
    return new Response(request.method === "HEAD" ? null : MANIFEST, {
      headers: { "docker-content-digest": DIGEST },
    });
  }, tls);
  const base = { ...defaultUpstream("x"), host: registry.host, tls: true, configured: true };
  const registryConfig = new UpstreamRegistry([
    { ...base, namespace: "insecure.test", acceptInvalidCerts: true },
    { ...base, namespace: "strict.test", acceptInvalidCerts: false },
  ]);
  using c = client(registryConfig);

  const manifest = await c.manifest("insecure.test", "library/alpine", "3.19", {
    method: "GET",
    accept: [MANIFEST_TYPE],
  });
  assert.equal(manifest.status, 200);
  assert.equal(await manifest.text(), MANIFEST);
  const head = await c.manifest("insecure.test", "library/alpine", "3.19", {
    method: "HEAD",
    accept: [MANIFEST_TYPE],
  });
  assert.equal(head.body, null);
  assert.equal(head.headers.get("docker-content-digest"), DIGEST);
  const blob = await c.blob("insecure.test", "library/alpine", DIGEST, { method: "GET" });
  assert.equal((await blob.arrayBuffer()).byteLength, 300_000);
  assert.equal(pair.tokens, 1);

  const error = await rejects(
    c.manifest("strict.test", "library/alpine", "3.19", { method: "GET", accept: [] }),
    "UNAVAILABLE",
  );
  assert.match(error.message, /TLS certificate verification failed/);
});

Deno.test("self-signed HTTPS: a stalled body through the insecure transport still times out", async () => {
  const tls = await selfSignedCertificate();
  await using registry = fake(() =>
    new Response(
      new ReadableStream({
        start(controller) {
          controller.enqueue(new Uint8Array(10));
        },
      }),
    ), tls);
  using c = client(
    new UpstreamRegistry([{
      ...defaultUpstream("registry.test"),
      host: registry.host,
      configured: true,
      acceptInvalidCerts: true,
    }]),
    { idleTimeoutMs: 200 },
  );
  const response = await c.blob("registry.test", "library/alpine", DIGEST, { method: "GET" });
  await assert.rejects(response.arrayBuffer(), (e: unknown) => {
    return e instanceof RegistryError && e.code === "UNAVAILABLE";
  });
});

Deno.test("a 429 with a long Retry-After: 429 to the client at once, then no request upstream until it passes", async () => {
  await using registry = fake(() =>
    new Response("slow down", {
      status: 429,
      headers: { "retry-after": "17", "ratelimit-remaining": "0;w=21600" },
    })
  );
  using c = client(upstreams(registry.host));
  const error = await rejects(getManifest(c), "TOOMANYREQUESTS");
  assert.equal(error.status, 429);
  assert.deepEqual(error.headers, { "Retry-After": "17" });
  assert.equal(registry.seen.length, 1, "17 s does not fit the retry budget: not retried");
  const again = await rejects(getManifest(c), "TOOMANYREQUESTS");
  assert.match(again.headers["Retry-After"], /^1[67]$/);
  assert.equal(registry.seen.length, 1, "while blocked, upstream is not asked");
  assert.ok(c.quotaLow("registry.test"));
});

Deno.test("transient upstream failures are retried; the client sees the first success", async () => {
  const answers = [503, 502, 200];
  await using registry = fake(() => {
    const status = answers.shift() ?? 200;
    return new Response(status === 200 ? "{}" : "busy", {
      status,
      headers: status === 200
        ? { "content-type": "application/vnd.oci.image.manifest.v1+json" }
        : {},
    });
  });
  using c = client(upstreams(registry.host));
  const response = await getManifest(c);
  assert.equal(response.status, 200);
  await response.body?.cancel();
  assert.equal(registry.seen.length, 3);
});

Deno.test("retries are bounded in count; a 429 with a short Retry-After waits for it", async () => {
  await using failing = fake(() => new Response("down", { status: 500 }));
  using c = client(upstreams(failing.host));
  await rejects(getManifest(c), "UPSTREAM_ERROR");
  assert.equal(failing.seen.length, 1 + FAST_RETRIES.retries);
  const head = c.manifest("registry.test", "library/alpine", "3.19", {
    method: "HEAD",
    accept: [MANIFEST_TYPE],
    retry: false, // a revalidation: the mirror has a cached answer
  });
  await rejects(head, "UPSTREAM_ERROR");
  assert.equal(failing.seen.length, 2 + FAST_RETRIES.retries, "retry: false tries once");

  let first = true;
  await using limited = fake(() => {
    if (!first) return new Response("{}", { status: 200 });
    first = false;
    return new Response("wait", { status: 429, headers: { "retry-after": "1" } });
  });
  using slow = client(upstreams(limited.host), { retry: { ...FAST_RETRIES, budgetMs: 5_000 } });
  const started = performance.now();
  const response = await getManifest(slow);
  await response.body?.cancel();
  assert.ok(performance.now() - started >= 950, "waited for Retry-After: 1");
  assert.equal(limited.seen.length, 2);

  // Not retried: answers a second try cannot change.
  await using missing = fake(() => new Response("no", { status: 404 }));
  using c404 = client(upstreams(missing.host));
  await rejects(getManifest(c404), "MANIFEST_UNKNOWN");
  assert.equal(missing.seen.length, 1);
});

Deno.test("a connection error is retried, then reported as UNAVAILABLE", async () => {
  const port = freePort();
  using c = client(upstreams(`127.0.0.1:${port}`));
  const started = performance.now();
  await rejects(getManifest(c), "UNAVAILABLE");
  assert.ok(performance.now() - started < 2_000, "within the retry budget");
});

Deno.test("ratelimit-remaining below rate_limit_reserve makes quotaLow true", async () => {
  let remaining = 50;
  await using registry = fake(() =>
    new Response("{}", {
      status: 200,
      headers: { "ratelimit-limit": "100;w=21600", "ratelimit-remaining": `${remaining};w=21600` },
    })
  );
  using c = client(upstreams(registry.host, { rateLimitReserve: 20 }));
  await (await getManifest(c)).body?.cancel();
  assert.equal(c.quotaLow("registry.test"), false);
  remaining = 20;
  await (await getManifest(c)).body?.cancel();
  assert.equal(c.quotaLow("registry.test"), true);
  assert.deepEqual(
    {
      limit: c.rateLimits.entries()[0][1].limit,
      remaining: c.rateLimits.entries()[0][1].remaining,
    },
    { limit: 100, remaining: 20 },
  );
});
