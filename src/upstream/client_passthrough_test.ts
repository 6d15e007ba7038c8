/**
 * UpstreamClient.checkAccess against in-process fake upstreams: the client's credentials, and
 * only they, answer the upstream's Basic or Bearer challenge; what each answer means; and the
 * configured credentials' token cache is left alone.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { defaultUpstream, type UpstreamConfig, UpstreamRegistry } from "../config/upstreams.ts";
import { RegistryError } from "../oci/errors.ts";
import { UpstreamClient } from "./client.ts";
import { freePort } from "../../tests/support/tools.ts";

const DIGEST = "sha256:" + "b".repeat(64);
const ALICE = { username: "alice", password: "alice-secret" };
const MALLORY = { username: "mallory", password: "guess" };
const CONFIGURED = { username: "mirror-bot", password: "bot-secret" };

interface Seen {
  method: string;
  path: string;
  authorization: string | null;
}

function fake(handler: (request: Request, url: URL) => Response | Promise<Response>) {
  const seen: Seen[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (request) => {
    const url = new URL(request.url);
    seen.push({
      method: request.method,
      path: url.pathname + url.search,
      authorization: request.headers.get("authorization"),
    });
    return handler(request, url);
  });
  return {
    seen,
    host: `127.0.0.1:${server.addr.port}`,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

function basicOf(header: string | null): { username: string; password: string } | undefined {
  const match = /^Basic (.+)$/.exec(header ?? "");
  if (!match) return undefined;
  const [username, ...rest] = Buffer.from(match[1], "base64").toString().split(":");
  return { username, password: rest.join(":") };
}

function client(host: string, extra: Partial<UpstreamConfig> = {}) {
  const c = new UpstreamClient(
    new UpstreamRegistry([{
      ...defaultUpstream("private.test"),
      host,
      tls: false,
      configured: true,
      ...CONFIGURED,
      auth: "passthrough",
      ...extra,
    }]),
  );
  return Object.assign(c, { [Symbol.dispose]: () => c.close() });
}

const unauthorized = (challenge: string) =>
  new Response(JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "no" }] }), {
    status: 401,
    headers: { "www-authenticate": challenge },
  });

/** distribution with htpasswd: every valid user may read everything. */
function basicRegistry() {
  return fake((request) => {
    const creds = basicOf(request.headers.get("authorization"));
    const valid = creds?.username === ALICE.username && creds.password === ALICE.password;
    if (!valid) return unauthorized('Basic realm="test"');
    return new Response(null, { status: 200 });
  });
}

Deno.test("checkAccess: Basic upstream, the client's credentials answer the challenge", async () => {
  await using up = basicRegistry();
  using c = client(up.host);
  const probe = { kind: "manifest", reference: "1" } as const;
  assert.equal(await c.checkAccess("private.test", "team/app", probe, ALICE), "allowed");
  assert.equal(await c.checkAccess("private.test", "team/app", probe, MALLORY), "unauthorized");
  const blob = { kind: "blob", digest: DIGEST } as const;
  assert.equal(await c.checkAccess("private.test", "team/app", blob, ALICE), "allowed");
  // First a HEAD without credentials (the challenge), then Basic up front, never the mirror's.
  assert.deepEqual(up.seen.map((s) => [s.method, s.path, basicOf(s.authorization)?.username]), [
    ["HEAD", "/v2/team/app/manifests/1", undefined],
    ["HEAD", "/v2/team/app/manifests/1", "alice"],
    ["HEAD", "/v2/team/app/manifests/1", "mallory"],
    ["HEAD", `/v2/team/app/blobs/${DIGEST}`, "alice"],
  ]);
});

/** distribution with token auth, and a token server granting alice team/* only. */
function tokenRegistry() {
  const tokens = fake((request, url) => {
    const creds = basicOf(request.headers.get("authorization"));
    const known = [ALICE, CONFIGURED].find((u) =>
      u.username === creds?.username && u.password === creds.password
    );
    if (!known) return unauthorized('Basic realm="tokens"');
    const scope = url.searchParams.get("scope") ?? "";
    const granted = known === CONFIGURED || scope.startsWith("repository:team/");
    return Response.json({ token: `${known.username}:${granted ? scope : "nothing"}` });
  });
  const registry = fake((request, url) => {
    const challenge = `Bearer realm="http://${tokens.host}/token",service="test"`;
    const token = /^Bearer (.+)$/.exec(request.headers.get("authorization") ?? "")?.[1];
    const repository = /^\/v2\/(.+)\/(manifests|blobs|tags)\//.exec(url.pathname)?.[1];
    if (token !== `${token?.split(":")[0]}:repository:${repository}:pull`) {
      return unauthorized(`${challenge},error="insufficient_scope"`);
    }
    if (url.pathname.includes("/manifests/gone")) return new Response(null, { status: 404 });
    return new Response(request.method === "HEAD" ? null : "{}", { status: 200 });
  });
  return { tokens, registry };
}

Deno.test("checkAccess: Bearer upstream, valid credentials without the scope are denied", async () => {
  const { tokens, registry } = tokenRegistry();
  await using _t = tokens;
  await using _r = registry;
  using c = client(registry.host);
  const probe = { kind: "manifest", reference: "1" } as const;
  assert.equal(await c.checkAccess("private.test", "team/app", probe, ALICE), "allowed");
  assert.equal(await c.checkAccess("private.test", "other/app", probe, ALICE), "denied");
  assert.equal(await c.checkAccess("private.test", "team/app", probe, MALLORY), "unauthorized");
  // Token requests carried the client's credentials, for the pull scope of the repository.
  assert.deepEqual(tokens.seen.map((s) => [basicOf(s.authorization)?.username, s.path]), [
    ["alice", "/token?service=test&scope=repository%3Ateam%2Fapp%3Apull"],
    ["alice", "/token?service=test&scope=repository%3Aother%2Fapp%3Apull"],
    ["mallory", "/token?service=test&scope=repository%3Ateam%2Fapp%3Apull"],
  ]);
  // The mirror's own fetch gets its own token: nothing of alice's was cached for it.
  tokens.seen.length = 0;
  const response = await c.manifest("private.test", "other/app", "1", {
    method: "GET",
    accept: [],
  });
  await response.body?.cancel();
  assert.deepEqual(tokens.seen.map((s) => basicOf(s.authorization)?.username), ["mirror-bot"]);
  // And alice's tokens are not cached either: a second check asks the token server again.
  tokens.seen.length = 0;
  assert.equal(await c.checkAccess("private.test", "team/app", probe, ALICE), "allowed");
  assert.equal(tokens.seen.length, 1);
});

Deno.test("checkAccess: a 404 for the object asks the tag list (tag deleted vs not yours)", async () => {
  const { tokens, registry } = tokenRegistry();
  await using _t = tokens;
  await using _r = registry;
  using c = client(registry.host);
  const gone = { kind: "manifest", reference: "gone" } as const;
  assert.equal(await c.checkAccess("private.test", "team/app", gone, ALICE), "allowed");
  assert.ok(registry.seen.some((s) => s.path === "/v2/team/app/tags/list?n=1"));
  // An upstream that answers 404 for everything the client may not see.
  await using hiding = fake(() => new Response(null, { status: 404 }));
  using h = client(hiding.host);
  assert.equal(await h.checkAccess("private.test", "team/app", gone, ALICE), "denied");
  assert.deepEqual(hiding.seen.map((s) => `${s.method} ${s.path}`), [
    "HEAD /v2/team/app/manifests/gone",
    "GET /v2/team/app/tags/list?n=1",
  ]);
});

Deno.test("checkAccess: 403 is denied; 5xx and no connection throw, with no secret", async () => {
  await using forbidding = fake(() => new Response(null, { status: 403 }));
  using f = client(forbidding.host);
  const probe = { kind: "tags" } as const;
  assert.equal(await f.checkAccess("private.test", "team/app", probe, ALICE), "denied");

  await using failing = fake(() =>
    Response.json({ errors: [{ message: `broken for ${ALICE.password}` }] }, { status: 503 })
  );
  using b = client(failing.host);
  const error = await b.checkAccess("private.test", "team/app", probe, ALICE).then(
    () => assert.fail("a 503 must throw"),
    (e) => e,
  );
  assert.ok(error instanceof RegistryError);
  assert.equal(error.code, "UNAVAILABLE");
  assert.ok(!error.message.includes(ALICE.password), error.message);
  assert.equal(failing.seen.length, 1, "no retries");

  using closed = client(`127.0.0.1:${freePort()}`);
  await assert.rejects(
    closed.checkAccess("private.test", "team/app", probe, ALICE),
    (e) => e instanceof RegistryError && e.code === "UNAVAILABLE",
  );
  await assert.rejects(
    closed.checkAccess("private.test", "../x", probe, ALICE),
    (e) => e instanceof RegistryError && e.code === "NAME_INVALID",
  );
});

Deno.test("checkAccess: a login probe asks GET /v2/, a token for no scope, the client's credentials", async () => {
  // Basic upstream: valid credentials get 200 from /v2/.
  await using basic = basicRegistry();
  using b = client(basic.host);
  const login = { kind: "login" } as const;
  assert.equal(await b.checkAccess("private.test", "", login, ALICE), "allowed");
  assert.equal(await b.checkAccess("private.test", "", login, MALLORY), "unauthorized");
  assert.deepEqual(basic.seen.map((s) => [s.method, s.path, basicOf(s.authorization)?.username]), [
    ["GET", "/v2/", undefined],
    ["GET", "/v2/", "alice"],
    ["GET", "/v2/", "mallory"],
  ]);
  // Token upstream: /v2/ takes any token its server issued; the login's token names no scope.
  await using tokens = fake((request) => {
    const creds = basicOf(request.headers.get("authorization"));
    if (creds?.username !== ALICE.username || creds.password !== ALICE.password) {
      return unauthorized('Basic realm="tokens"');
    }
    return Response.json({ token: "alice-login" });
  });
  await using registry = fake((request, url) => {
    if (url.pathname !== "/v2/") return new Response(null, { status: 404 });
    if (request.headers.get("authorization") === "Bearer alice-login") {
      return new Response("{}", { status: 200 });
    }
    return unauthorized(`Bearer realm="http://${tokens.host}/token",service="test"`);
  });
  using t = client(registry.host);
  assert.equal(await t.checkAccess("private.test", "", login, ALICE), "allowed");
  assert.equal(await t.checkAccess("private.test", "", login, MALLORY), "unauthorized");
  assert.deepEqual(tokens.seen.map((s) => [basicOf(s.authorization)?.username, s.path]), [
    ["alice", "/token?service=test"],
    ["mallory", "/token?service=test"],
  ]);
  // No registry API there: an upstream error (the gate lets such a login through, warning).
  await using nothing = fake(() => new Response("not here", { status: 404 }));
  using n = client(nothing.host);
  const error = await n.checkAccess("private.test", "", login, ALICE).catch((e) => e);
  assert.ok(error instanceof RegistryError && error.code === "UPSTREAM_ERROR", String(error));
});
