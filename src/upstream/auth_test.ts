import assert from "node:assert/strict";
import { defaultUpstream } from "../config/upstreams.ts";
import { RegistryError } from "../oci/errors.ts";
import {
  basicAuthorization,
  hasCredentials,
  type IssuedToken,
  parseTokenResponse,
  parseWwwAuthenticate,
  pullScope,
  TokenCache,
  tokenCacheKey,
  tokenRealm,
} from "./auth.ts";

Deno.test("WWW-Authenticate: Docker Hub style Bearer challenge", () => {
  assert.deepEqual(
    parseWwwAuthenticate(
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",' +
        'scope="repository:library/alpine:pull"',
    ),
    [{
      scheme: "bearer",
      params: {
        realm: "https://auth.docker.io/token",
        service: "registry.docker.io",
        scope: "repository:library/alpine:pull",
      },
    }],
  );
});

Deno.test("WWW-Authenticate: commas and escapes inside quoted strings", () => {
  const [challenge] = parseWwwAuthenticate(
    'Bearer realm="https://r.test/token?a=1,b=2", scope="repository:x:pull,push", ' +
      'error="insufficient_scope", error_description="say \\"hi\\", then \\\\ go"',
  );
  assert.equal(challenge.params.realm, "https://r.test/token?a=1,b=2");
  assert.equal(challenge.params.scope, "repository:x:pull,push");
  assert.equal(challenge.params.error, "insufficient_scope");
  assert.equal(challenge.params.error_description, 'say "hi", then \\ go');
});

Deno.test("WWW-Authenticate: several challenges, case, whitespace and unquoted values", () => {
  assert.deepEqual(
    parseWwwAuthenticate(
      'Basic realm="Registry Realm", charset="UTF-8" ,  BEARER  Realm = https://a.test/t , ' +
        "Service=svc,,Negotiate abc123==, Digest",
    ),
    [
      { scheme: "basic", params: { realm: "Registry Realm", charset: "UTF-8" } },
      { scheme: "bearer", params: { realm: "https://a.test/t", service: "svc" } },
      { scheme: "negotiate", params: {}, token68: "abc123==" },
      { scheme: "digest", params: {} },
    ],
  );
});

Deno.test("WWW-Authenticate: repeated headers joined by Headers.get", () => {
  const headers = new Headers();
  headers.append("www-authenticate", 'Bearer realm="https://a.test/token",service="a"');
  headers.append("www-authenticate", 'Basic realm="b"');
  const challenges = parseWwwAuthenticate(headers.get("www-authenticate")!);
  assert.deepEqual(challenges.map((c) => c.scheme), ["bearer", "basic"]);
  assert.equal(challenges[0].params.service, "a");
});

Deno.test("WWW-Authenticate: garbage and edge cases never throw", () => {
  assert.deepEqual(parseWwwAuthenticate(""), []);
  assert.deepEqual(parseWwwAuthenticate("   ,  , "), []);
  assert.deepEqual(parseWwwAuthenticate("Basic"), [{ scheme: "basic", params: {} }]);
  assert.deepEqual(parseWwwAuthenticate('Bearer realm="unterminated'), [
    { scheme: "bearer", params: { realm: "unterminated" } },
  ]);
  assert.deepEqual(parseWwwAuthenticate('"quoted", Bearer realm=x'), [
    { scheme: "bearer", params: { realm: "x" } },
  ]);
  // The first occurrence of a parameter wins.
  assert.deepEqual(parseWwwAuthenticate("Bearer realm=a, realm=b"), [
    { scheme: "bearer", params: { realm: "a" } },
  ]);
  assert.deepEqual(parseWwwAuthenticate("Bearer realm="), [
    { scheme: "bearer", params: { realm: "" } },
  ]);
});

Deno.test("basicAuthorization encodes UTF-8 and pullScope names the repository", () => {
  assert.equal(basicAuthorization("Aladdin", "open sesame"), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
  assert.equal(basicAuthorization("test", "123£"), "Basic dGVzdDoxMjPCow==");
  assert.equal(pullScope("library/alpine"), "repository:library/alpine:pull");
});

Deno.test("tokenRealm: service and pull scope added to an http(s) realm; anything else refused", () => {
  const upstream = defaultUpstream("docker.io");
  const realm = tokenRealm(upstream, {
    scheme: "bearer",
    params: { realm: "https://auth.docker.io/token?x=1#frag", service: "registry.docker.io" },
  }, pullScope("library/alpine"));
  assert.equal(
    realm.href,
    "https://auth.docker.io/token?x=1&service=registry.docker.io" +
      "&scope=repository%3Alibrary%2Falpine%3Apull",
  );
  for (const bad of [undefined, "not a url", "ftp://auth.example/token", "file:///etc/passwd"]) {
    assert.throws(
      () => tokenRealm(upstream, { scheme: "bearer", params: bad ? { realm: bad } : {} }, "scope"),
      (e) => e instanceof RegistryError && e.code === "UPSTREAM_ERROR",
      String(bad),
    );
  }
});

Deno.test("tokenCacheKey: one token per upstream endpoint and repository; hasCredentials", () => {
  const hub = defaultUpstream("docker.io");
  const keys = new Set([
    tokenCacheKey(hub, "library/alpine"),
    tokenCacheKey(hub, "library/debian"),
    tokenCacheKey({ ...hub, host: "mirror.example" }, "library/alpine"),
    tokenCacheKey({ ...defaultUpstream("quay.io"), host: hub.host }, "library/alpine"),
  ]);
  assert.equal(keys.size, 4);
  assert.equal(hasCredentials(hub), false);
  assert.equal(hasCredentials({ ...hub, username: "u" }), false);
  assert.equal(hasCredentials({ ...hub, username: "u", password: "" }), true);
});

Deno.test("parseTokenResponse: token or access_token, expires_in default 60 s", () => {
  assert.deepEqual(parseTokenResponse({ token: "a", expires_in: 300 }), {
    token: "a",
    lifetimeMs: 300_000,
  });
  assert.deepEqual(parseTokenResponse({ access_token: "b" }), { token: "b", lifetimeMs: 60_000 });
  assert.deepEqual(parseTokenResponse({ token: "", access_token: "c", expires_in: -5 }), {
    token: "c",
    lifetimeMs: 60_000,
  });
  assert.equal(parseTokenResponse({ expires_in: 10 }), undefined);
  assert.equal(parseTokenResponse("token"), undefined);
  assert.equal(parseTokenResponse(null), undefined);
});

function clock() {
  let now = 1_000_000;
  return { now: () => now, advance: (ms: number) => now += ms };
}

Deno.test("TokenCache keeps a token until its lifetime minus a margin", async () => {
  const time = clock();
  const cache = new TokenCache({ now: time.now });
  let issued = 0;
  const issue = (lifetimeMs: number) => (): Promise<IssuedToken> =>
    Promise.resolve({ token: `t${++issued}`, lifetimeMs });

  assert.equal(await cache.obtain("k", issue(300_000)), "t1");
  assert.equal(await cache.obtain("k", issue(300_000)), "t1");
  assert.equal(cache.get("k"), "t1");
  time.advance(269_000); // margin is min(30 s, 10 %) = 30 s
  assert.equal(cache.get("k"), "t1");
  time.advance(1_000);
  assert.equal(cache.get("k"), undefined);
  assert.equal(await cache.obtain("k", issue(60_000)), "t2");
  time.advance(53_999); // margin 6 s
  assert.equal(cache.get("k"), "t2");
  time.advance(1);
  assert.equal(cache.get("k"), undefined);
  // Keys are independent.
  assert.equal(await cache.obtain("other", issue(60_000)), "t3");
  assert.equal(cache.get("k"), undefined);
});

Deno.test("TokenCache: concurrent callers share one request; failures are not cached", async () => {
  const cache = new TokenCache();
  let calls = 0;
  const gate = Promise.withResolvers<IssuedToken>();
  const issue = () => {
    calls++;
    return gate.promise;
  };
  const all = Promise.all([
    cache.obtain("k", issue),
    cache.obtain("k", issue),
    cache.obtain("k", issue),
  ]);
  gate.resolve({ token: "shared", lifetimeMs: 60_000 });
  assert.deepEqual(await all, ["shared", "shared", "shared"]);
  assert.equal(calls, 1);

  const failing = new TokenCache();
  let attempts = 0;
  const flaky = () => {
    attempts++;
    return attempts === 1
      ? Promise.reject(new Error("token server down"))
      : Promise.resolve({ token: "ok", lifetimeMs: 60_000 });
  };
  await assert.rejects(
    Promise.all([failing.obtain("k", flaky), failing.obtain("k", flaky)]),
    /token server down/,
  );
  assert.equal(attempts, 1);
  assert.equal(await failing.obtain("k", flaky), "ok");
  assert.equal(attempts, 2);
});

Deno.test("TokenCache: a rejected token is replaced, unless someone already replaced it", async () => {
  const cache = new TokenCache();
  let issued = 0;
  const issue = () => Promise.resolve({ token: `t${++issued}`, lifetimeMs: 60_000 });
  assert.equal(await cache.obtain("k", issue), "t1");
  assert.equal(await cache.obtain("k", issue, "t1"), "t2");
  // A caller that was refused with the old t1 gets the newer cached t2, no new request.
  assert.equal(await cache.obtain("k", issue, "t1"), "t2");
  assert.equal(issued, 2);
  cache.invalidate("k", "t1"); // stale: no effect
  assert.equal(cache.get("k"), "t2");
  cache.invalidate("k", "t2");
  assert.equal(cache.get("k"), undefined);
});

Deno.test("TokenCache stays bounded", async () => {
  const time = clock();
  const cache = new TokenCache({ now: time.now, maxEntries: 3 });
  for (let i = 0; i < 10; i++) {
    await cache.obtain(`k${i}`, () => Promise.resolve({ token: `t${i}`, lifetimeMs: 60_000 }));
  }
  assert.equal(cache.size, 3);
  assert.equal(cache.get("k9"), "t9");
  assert.equal(cache.get("k0"), undefined);
});
