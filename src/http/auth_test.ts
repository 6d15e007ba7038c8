/**
 * Authentication and access rules through the real handler over a socket: challenges, the
 * token endpoint, Basic, 401 versus 403, refusals that come before any lookup, the login
 * backoff, and hostile Authorization headers. The e2e matrix with real clients is
 * tests/e2e/auth_test.ts.
 */
import { Buffer } from "node:buffer";
import { assert, assertEquals, assertMatch } from "../../tests/support/assert.ts";
import { FakeUpstream } from "../../tests/support/fake_upstream.ts";
import { Mirror } from "../mirror/mirror.ts";
import { defaultUpstream, UpstreamRegistry } from "../config/upstreams.ts";
import { AccessControl } from "../config/access.ts";
import { Metrics } from "../runtime/metrics.ts";
import { RegistryError } from "../oci/errors.ts";
import { OCI_MANIFEST } from "../oci/media_types.ts";
import { resolveName } from "../oci/namespace.ts";
import { LocalRegistry } from "../registry/local.ts";
import { createHandler } from "./server.ts";
import { FilesystemStorage } from "../storage/filesystem.ts";
import type { AccessVerdict, ClientCredentials } from "../upstream/client.ts";
import { Auth } from "./auth.ts";
import { type AccessProbe, PassthroughGate, passthroughKey } from "./passthrough.ts";
import { TokenSigner } from "./token.ts";

// `htpasswd -Bbn alice secret` and `htpasswd -Bbn bob hunter2`.
const HTPASSWD = `alice:$2y$05$no6QRFH5uSkAVy6uoIVfxOSbyfO6VRpgBmn13Sji.E4VNcA6L3og6
bob:$2y$05$1BQgcmld6.7P2D8wnieYaewY/BXpCjMJWWA0rD01Vb9xN8PKa.NkS
`;
const RULES = `htpasswd: htpasswd
rules:
  - namespace: myorg
    users: [alice]
    actions: [pull, push, delete]
  - namespace: private.test
    users: [alice]
    actions: [pull]
`;

interface Fixture {
  url: string;
  upstream: FakeUpstream;
  logs: string[];
  metrics: Metrics;
  clock: { now: number };
}

async function withAuthServer(fn: (f: Fixture) => Promise<void>, rules = RULES) {
  const root = await Deno.makeTempDir({ prefix: "auth-test-" });
  await Deno.writeTextFile(`${root}/auth.yaml`, rules);
  await Deno.writeTextFile(`${root}/htpasswd`, HTPASSWD);
  const storage = new FilesystemStorage(`${root}/store`);
  const upstream = new FakeUpstream();
  const logs: string[] = [];
  const metrics = new Metrics();
  const clock = { now: Date.now() };
  const upstreams = new UpstreamRegistry([
    { ...defaultUpstream("private.test"), username: "mirror", password: "pw", configured: true },
  ]);
  const mirror = new Mirror({ storage, upstream, upstreams, spoolDir: storage.tempDir, metrics });
  const access = await AccessControl.load(`${root}/auth.yaml`, {
    isPrivate: (ns) => upstreams.get(ns).username !== undefined,
    log: (line) => logs.push(line),
  });
  const auth = new Auth({
    access,
    signer: new TokenSigner(new Uint8Array(32).fill(1), 60_000, () => clock.now),
    metrics,
    now: () => clock.now,
  });
  const handler = createHandler({
    mirror,
    registry: new LocalRegistry({ storage, namespaces: ["myorg"] }),
    hosted: ["myorg"],
    defaultNamespace: "docker.io",
    metrics,
    log: (line) => logs.push(line),
    auth,
  });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
  try {
    await fn({ url: `http://127.0.0.1:${server.addr.port}`, upstream, logs, metrics, clock });
  } finally {
    await server.shutdown();
    await mirror.settled();
    await storage.close();
    await Deno.remove(root, { recursive: true });
  }
}

const basic = (user: string, password: string) =>
  `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;

async function call(
  url: string,
  authorization?: string,
  init: RequestInit = {},
): Promise<
  { status: number; code?: string; challenge: string | null; body: string; headers: Headers }
> {
  const headers = new Headers(init.headers);
  if (authorization !== undefined) headers.set("authorization", authorization);
  const response = await fetch(url, { ...init, headers });
  const body = await response.text();
  let code: string | undefined;
  try {
    code = JSON.parse(body).errors?.[0]?.code;
  } catch { /* not an error body */ }
  return {
    status: response.status,
    code,
    challenge: response.headers.get("www-authenticate"),
    body,
    headers: response.headers,
  };
}

async function tokenFor(url: string, scope: string, authorization?: string): Promise<string> {
  const response = await call(`${url}/token?service=oci-registry&scope=${scope}`, authorization);
  assertEquals(response.status, 200, response.body);
  return JSON.parse(response.body).token;
}

Deno.test("ping: 401 with a Bearer challenge unless authenticated", async () => {
  await withAuthServer(async ({ url }) => {
    const anonymous = await call(`${url}/v2/`);
    assertEquals([anonymous.status, anonymous.code], [401, "UNAUTHORIZED"]);
    assertEquals(anonymous.challenge, `Bearer realm="${url}/token",service="oci-registry"`);
    assertEquals((await call(`${url}/v2/`, basic("alice", "secret"))).status, 200);
    assertEquals((await call(`${url}/v2/`, basic("alice", "nope"))).status, 401);
    const token = await tokenFor(url, "repository:myorg/app:pull", basic("bob", "hunter2"));
    assertEquals((await call(`${url}/v2/`, `Bearer ${token}`)).status, 200);
  });
});

Deno.test("the token flow: anonymous tokens for public pulls, user tokens for what rules grant", async () => {
  await withAuthServer(async ({ url, upstream, logs }) => {
    upstream.addManifest("1", { schemaVersion: 2, mediaType: OCI_MANIFEST, layers: [] });
    // Anonymous pull of a public mirrored namespace works without any token, and with one.
    assertEquals((await call(`${url}/v2/library/x/manifests/1`)).status, 200);
    const anonymous = await tokenFor(url, "repository:library/x:pull");
    assertEquals(
      (await call(`${url}/v2/library/x/manifests/1`, `Bearer ${anonymous}`)).status,
      200,
    );
    // A hosted push: anonymous is challenged with the scope to ask for, alice gets a token.
    const anon = await call(`${url}/v2/myorg/app/blobs/uploads/`, undefined, { method: "POST" });
    assertEquals(anon.status, 401);
    assertMatch(anon.challenge!, /scope="repository:myorg\/app:pull,push"/);
    const alice = await tokenFor(url, "repository:myorg/app:pull,push", basic("alice", "secret"));
    const claims = JSON.parse(Buffer.from(alice.split(".")[0], "base64url").toString());
    assertEquals(claims.access, { "hosted:myorg/app": ["pull", "push"] });
    const push = await call(`${url}/v2/myorg/app/blobs/uploads/`, `Bearer ${alice}`, {
      method: "POST",
    });
    assertEquals(push.status, 202, push.body);
    // The access log names the user, never the credential.
    assert(
      logs.some((l) => l.includes("POST /v2/myorg/app/blobs/uploads/ 202") && l.includes("alice")),
    );
    // Bob asked for push and got nothing: his token works for nothing here, and he is denied.
    const bob = await tokenFor(url, "repository:myorg/app:pull,push", basic("bob", "hunter2"));
    const bobClaims = JSON.parse(Buffer.from(bob.split(".")[0], "base64url").toString());
    assertEquals(bobClaims.access, {});
    const denied = await call(`${url}/v2/myorg/app/blobs/uploads/`, `Bearer ${bob}`, {
      method: "POST",
    });
    assertEquals([denied.status, denied.code], [403, "DENIED"]);
    // The token names the resolved repository: a docker.io token is no private.test token.
    assertEquals(
      (await call(`${url}/v2/library/x/manifests/1?ns=private.test`, `Bearer ${anonymous}`)).status,
      401,
    );
  });
});

Deno.test("refusals come before any lookup: existing and missing look the same", async () => {
  await withAuthServer(async ({ url, upstream }) => {
    // Hosted content that exists (pushed by alice) and a repository that does not.
    const alice = basic("alice", "secret");
    const start = await call(`${url}/v2/myorg/app/blobs/uploads/`, alice, { method: "POST" });
    const location = start.headers.get("location")!;
    const digest = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    const put = await call(`${url}${location}?digest=${digest}`, alice, {
      method: "PUT",
      body: "foo",
    });
    assertEquals(put.status, 201, put.body);
    assertEquals((await call(`${url}/v2/myorg/app/blobs/${digest}`, alice)).status, 200);
    const manifest = JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: "application/vnd.oci.image.config.v1+json", digest, size: 3 },
      layers: [],
    });
    const tagged = await call(`${url}/v2/myorg/app/manifests/1`, alice, {
      method: "PUT",
      headers: { "content-type": OCI_MANIFEST },
      body: manifest,
    });
    assertEquals(tagged.status, 201, tagged.body);
    for (
      const [authorization, status] of [[undefined, 401], [basic("bob", "hunter2"), 403]] as const
    ) {
      const existing = await call(`${url}/v2/myorg/app/blobs/${digest}`, authorization);
      const missing = await call(`${url}/v2/myorg/nothing/blobs/${digest}`, authorization);
      assertEquals(existing.status, status);
      assertEquals(
        [missing.status, missing.body],
        [existing.status, existing.body.replace("myorg/app", "myorg/nothing")],
      );
    }
    // A private upstream is not even asked for someone without pull rights.
    for (const authorization of [undefined, basic("bob", "hunter2")]) {
      const response = await call(`${url}/v2/private.test/team/x/manifests/1`, authorization);
      assertEquals(response.status, authorization ? 403 : 401);
      const blob = await call(`${url}/v2/x/blobs/${digest}?ns=private.test`, authorization);
      assertEquals(blob.status, authorization ? 403 : 401);
    }
    assertEquals(upstream.calls.length, 0);
    // A mount needs pull rights on its source (and a source that is a name at all): else an
    // ordinary upload.
    for (const from of ["myorg/app", "myorg/../app", "private.test/team/x", ""]) {
      const mount = await call(
        `${url}/v2/myorg/copy/blobs/uploads/?mount=${digest}&from=${from}`,
        alice,
        { method: "POST" },
      );
      assertEquals(mount.status, from === "myorg/app" ? 201 : 202, from);
    }
    // The catalog names only what the client may pull.
    assertEquals(JSON.parse((await call(`${url}/v2/_catalog`, alice)).body).repositories, [
      "myorg/app",
    ]);
    assertEquals(JSON.parse((await call(`${url}/v2/_catalog`)).body).repositories, []);
  });
});

Deno.test("tokens: expired, forged, for another scope", async () => {
  await withAuthServer(async ({ url, clock }) => {
    const alice = await tokenFor(url, "repository:myorg/app:pull", basic("alice", "secret"));
    assertEquals((await call(`${url}/v2/myorg/app/tags/list`, `Bearer ${alice}`)).status, 404);
    // Another scope: alice may pull myorg/other, but this token does not say so.
    const other = await call(`${url}/v2/myorg/other/tags/list`, `Bearer ${alice}`);
    assertEquals(other.status, 401);
    assertMatch(other.challenge!, /error="insufficient_scope"/);
    // Forged: the payload widened, the signature kept.
    const [payload, signature] = alice.split(".");
    const claims = JSON.parse(Buffer.from(payload, "base64url").toString());
    claims.access["hosted:myorg/other"] = ["pull"];
    const forged = `${Buffer.from(JSON.stringify(claims)).toString("base64url")}.${signature}`;
    const refused = await call(`${url}/v2/myorg/other/tags/list`, `Bearer ${forged}`);
    assertEquals(refused.status, 401);
    assertMatch(refused.challenge!, /error="invalid_token"/);
    clock.now += 61_000;
    assertEquals((await call(`${url}/v2/myorg/app/tags/list`, `Bearer ${alice}`)).status, 401);
  });
});

Deno.test("hostile Authorization headers: 401, 431 or 429, never a crash or a secret echoed", async () => {
  await withAuthServer(async ({ url, logs, metrics }) => {
    const target = `${url}/v2/myorg/app/tags/list`;
    for (
      const header of [
        "Basic",
        "Basic !!!!",
        `Basic ${btoa("no-colon")}`,
        `Basic ${btoa(":empty-user")}`,
        `Basic ${"A".repeat(5000)}`,
        "Bearer",
        "Bearer a.b",
        "Bearer " + "x".repeat(9000),
        "Digest username=alice",
        "Basic  YWxpY2U6c2VjcmV0 extra",
        "\u00e9",
      ]
    ) {
      let response;
      try {
        response = await call(target, header);
      } catch {
        continue; // fetch refuses to send some of these at all
      }
      assertEquals(response.status, 401, header.slice(0, 30));
      assertEquals(response.code, "UNAUTHORIZED");
    }
    const huge = await call(target, `Bearer ${"x".repeat(40_000)}`);
    assertEquals(huge.status, 431);
    // A burst of wrong passwords: the first few are checked, then 429 with Retry-After.
    const statuses = await Promise.all(
      Array.from({ length: 12 }, () => call(target, basic("alice", "guess"))),
    );
    const counts = statuses.reduce<Record<number, number>>((c, r) => {
      c[r.status] = (c[r.status] ?? 0) + 1;
      return c;
    }, {});
    assert(counts[429] > 0 && counts[401] > 0, JSON.stringify(counts));
    const locked = statuses.find((r) => r.status === 429)!;
    assert(Number(locked.headers.get("retry-after")) >= 1);
    // Even the right password waits while locked.
    assertEquals((await call(target, basic("alice", "secret"))).status, 429);
    assert(metrics.render().includes('oci_registry_auth_failures_total{reason="bad_credentials"}'));
    const text = logs.join("\n") + metrics.render();
    for (const secret of ["secret", "guess", "$2y$", btoa("alice:guess")]) {
      assert(!text.includes(secret), `"${secret}" leaked`);
    }
  });
});

Deno.test("without an auth config: reads open, hosted writes only with --allow-anonymous-push", async () => {
  for (const allowAnonymousPush of [false, true]) {
    const root = await Deno.makeTempDir({ prefix: "auth-test-" });
    const storage = new FilesystemStorage(root);
    const metrics = new Metrics();
    const mirror = new Mirror({
      storage,
      upstream: new FakeUpstream(),
      upstreams: new UpstreamRegistry([]),
      spoolDir: storage.tempDir,
      metrics,
    });
    const handler = createHandler({
      mirror,
      registry: new LocalRegistry({ storage, namespaces: ["myorg"] }),
      hosted: ["myorg"],
      defaultNamespace: "docker.io",
      metrics,
      log: () => {},
      allowAnonymousPush,
    });
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
    try {
      const url = `http://127.0.0.1:${server.addr.port}`;
      assertEquals((await call(`${url}/v2/`)).status, 200);
      assertEquals((await call(`${url}/token`)).status, 404);
      assertEquals((await call(`${url}/v2/myorg/app/tags/list`)).status, 404);
      const push = await call(`${url}/v2/myorg/app/blobs/uploads/`, undefined, { method: "POST" });
      assertEquals(
        [push.status, push.code],
        allowAnonymousPush ? [202, undefined] : [403, "DENIED"],
      );
      const del = await call(`${url}/v2/myorg/app/manifests/1`, undefined, { method: "DELETE" });
      assertEquals(del.status, allowAnonymousPush ? 404 : 403);
    } finally {
      await server.shutdown();
      await storage.close();
      await Deno.remove(root, { recursive: true });
    }
  }
});

Deno.test("token: passthrough scopes next to containerd's own (the name without the registry)", async () => {
  await withPassthroughAccess(async (access) => {
    // The upstream's accounts: dev may pull, other is valid but may not; alice is none of its.
    const checked: string[] = [];
    const passthrough = {
      active: true,
      covers: (namespace: string) => namespace === "private.test",
      check: (c: ClientCredentials, _address: string, namespace: string, repository: string) => {
        checked.push(`${c.username} ${namespace}/${repository}`);
        const known = { dev: "dev-pw", other: "other-pw" }[c.username];
        const verdict: AccessVerdict = known !== c.password
          ? "unauthorized"
          : c.username === "dev"
          ? "allowed"
          : "denied";
        return Promise.resolve(verdict);
      },
      login: () => Promise.resolve(false),
    };
    const signer = new TokenSigner(new Uint8Array(32).fill(2), 60_000);
    const auth = new Auth({ access, signer, metrics: new Metrics(), passthrough });
    const resolve = (name: string) => ({ hosted: false, ...resolveName(name, null, "docker.io") });
    /** What a token request for `scopes` from one address gets: its status and its grants. */
    const token = async (scopes: string[], authorization?: string) => {
      const query = new URLSearchParams(scopes.map((scope) => ["scope", scope]));
      const request = new Request(`http://mirror/token?${query}`, {
        headers: authorization ? { authorization } : {},
      });
      try {
        const response = await auth.token(request, "10.0.0.1", query, resolve);
        return {
          status: response.status,
          access: signer.verify((await response.json()).token)!.access,
        };
      } catch (e) {
        return { status: (e as RegistryError).status, access: undefined };
      }
    };
    // What containerd asks for a pull of private.test/team/app through the mirror (`?ns=`).
    const containerd = ["repository:private.test/team/app:pull", "repository:team/app:pull"];
    const gate = passthroughKey("private.test", "team/app");
    // Anonymous pulls of docker.io/team/app are what the rules give anyone.
    const others = { "mirror:docker.io/team/app": ["pull" as const] };

    // Upstream accepts dev: pull recorded for the passthrough name, anonymous rights for the
    // other. No mirror login is tried, so none fails: six in a row are no lockout, and alice
    // logs in from the same address afterwards.
    for (let i = 0; i < 6; i++) {
      assertEquals(await token(containerd, basic("dev", "dev-pw")), {
        status: 200,
        access: { [gate]: ["pull"], ...others },
      });
    }
    assertEquals(checked, Array(6).fill("dev private.test/team/app"));
    assertEquals(
      (await token(["repository:library/x:pull"], basic("alice", "secret"))).status,
      200,
    );
    // Valid upstream, no access: the refusal is recorded (requests then get 403).
    assertEquals(await token(containerd, basic("other", "other-pw")), {
      status: 200,
      access: { [gate]: [], ...others },
    });
    // Upstream rejects the credentials: the mirror's rules answer, as for any request. alice
    // gets what they give her (nothing for the passthrough name: the gate reads no rule),
    // a wrong password 401, anonymous the anonymous rights.
    assertEquals(await token(containerd, basic("alice", "secret")), {
      status: 200,
      access: { "mirror:private.test/team/app": ["pull"], ...others },
    });
    assertEquals((await token(containerd, basic("dev", "wrong"))).status, 401);
    assertEquals(await token(containerd), { status: 200, access: others });
    // Only passthrough names asked for: a wrong password is 401 without the mirror's rules.
    assertEquals((await token(containerd.slice(0, 1), basic("alice", "secret"))).status, 401);
  });
});

Deno.test("logins with a passthrough upstream's credentials: checked there, no lockout when accepted", async () => {
  await withPassthroughAccess(async (access) => {
    // The real gate over an upstream that knows dev (dev-pw); "down" finds it unreachable.
    const asked: string[] = [];
    const passthrough = new PassthroughGate({
      upstreams: new UpstreamRegistry([
        { ...defaultUpstream("private.test"), configured: true, auth: "passthrough" },
      ]),
      checker: {
        checkAccess(_namespace: string, _repository: string, probe: AccessProbe, c) {
          assertEquals(probe.kind, "login");
          asked.push(c.username);
          if (c.password === "down") {
            return Promise.reject(new RegistryError("UNAVAILABLE", "cannot reach it"));
          }
          const valid = c.username === "dev" && c.password === "dev-pw";
          return Promise.resolve<AccessVerdict>(valid ? "allowed" : "unauthorized");
        },
      },
    });
    const metrics = new Metrics();
    const signer = new TokenSigner(new Uint8Array(32).fill(3), 60_000);
    const auth = new Auth({ access, signer, metrics, passthrough });
    const resolve = (name: string) => ({ hosted: false, ...resolveName(name, null, "docker.io") });
    const ping = async (authorization: string, address = "10.0.0.1") => {
      try {
        await auth.ping(new Request("http://mirror/v2/", { headers: { authorization } }), address);
        return 200;
      } catch (e) {
        return (e as RegistryError).status;
      }
    };
    /** `docker login` with --auth-config: a token for no repository. */
    const login = async (authorization: string, address = "10.0.0.1") => {
      const query = new URLSearchParams({ service: "oci-registry", account: "dev" });
      const request = new Request(`http://mirror/token?${query}`, { headers: { authorization } });
      try {
        const response = await auth.token(request, address, query, resolve);
        return { status: response.status, access: signer.verify((await response.json()).token)! };
      } catch (e) {
        return { status: (e as RegistryError).status, access: undefined };
      }
    };
    // Many nodes behind one address log in with upstream credentials: never a lockout.
    for (let i = 0; i < 8; i++) {
      assertEquals(await ping(basic("dev", "dev-pw")), 200);
      const token = await login(basic("dev", "dev-pw"));
      assertEquals(token.status, 200);
      // The token is anonymous: the login proved upstream credentials, not a mirror user.
      assertEquals([token.access?.sub, token.access?.access], ["", {}]);
    }
    // Asked once: the gate remembers the pass.
    assertEquals(asked, ["dev"]);
    // Credentials upstream does not take: 401; from the sixth on, 429 without asking it.
    asked.length = 0;
    const refused = [];
    for (let i = 0; i < 7; i++) refused.push((await login(basic("dev", `guess-${i}`))).status);
    assertEquals(refused, [401, 401, 401, 401, 401, 429, 429]);
    assertEquals(asked.length, 5);
    // Only that address and user name are locked: a mirror user and another upstream account
    // log in from the same address as before.
    assertEquals(await ping(basic("alice", "secret")), 200);
    assertEquals((await login(basic("ops", "ops-guess"))).status, 401);
    // A mirror user's name with a wrong password is the mirror's to refuse: upstream not asked.
    asked.length = 0;
    assertEquals(await ping(basic("bob", "wrong"), "10.0.0.2"), 401);
    assertEquals((await login(basic("alice", "wrong"), "10.0.0.3")).status, 401);
    assertEquals(asked, []);
    // The gate could not ask upstream (it let the login through): 200, no failure counted.
    for (let i = 0; i < 6; i++) assertEquals(await ping(basic("eve", "down"), "10.0.0.4"), 200);
    // A mirror user still logs in as before, and a login only counts as one when asked for:
    // a pull's credentials are the mirror's alone (401, upstream not asked).
    assertEquals(await ping(basic("alice", "secret"), "10.0.0.5"), 200);
    asked.length = 0;
    await assertRejects401(
      auth.identify(
        new Request("http://mirror/v2/x/manifests/1", {
          headers: { authorization: basic("eve", "down") },
        }),
        "10.0.0.6",
      ),
    );
    assertEquals(asked, []);
    // The mirror's own lockout never struck: upstream verdicts are the gate's to count.
    assert(!/oci_registry_auth_failures_total\{reason="locked"\}/.test(metrics.render()));
  });
});

/** The test rules and users, with private.test private (the passthrough namespace). */
async function withPassthroughAccess(fn: (access: AccessControl) => Promise<void>) {
  const root = await Deno.makeTempDir({ prefix: "auth-test-" });
  try {
    await Deno.writeTextFile(`${root}/auth.yaml`, RULES);
    await Deno.writeTextFile(`${root}/htpasswd`, HTPASSWD);
    await fn(
      await AccessControl.load(`${root}/auth.yaml`, {
        isPrivate: (namespace) => namespace === "private.test",
        log: () => {},
      }),
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

async function assertRejects401(promise: Promise<unknown>): Promise<void> {
  try {
    await promise;
  } catch (e) {
    assertEquals((e as RegistryError).status, 401);
    return;
  }
  throw new Error("expected a 401");
}
