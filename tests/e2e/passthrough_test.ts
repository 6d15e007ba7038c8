/**
 * Credential pass-through (`auth: passthrough`) against real upstreams and real clients: a
 * mirror process in front of distribution (htpasswd, and token auth with a token server that
 * gives one valid user no access to the repository), pulled from with skopeo --src-creds,
 * podman login and plain HTTP.
 *
 * What must hold: content cached for one client is not served to another whose own upstream
 * credentials are wrong (401) or lack access (403), nor to anyone anonymous (401 with a
 * challenge); an allowed client pulls byte for byte; the check is one upstream request per
 * client and repository within its TTL; an unreachable upstream fails closed for credentials
 * it never confirmed.
 */
import { Buffer } from "node:buffer";
import { assert, assertEquals, assertMatch } from "../support/assert.ts";
import { podmanClient } from "../support/clients.ts";
import {
  assertDirImage,
  buildImage,
  type Image,
  pushImage,
  skopeoPullDir,
} from "../support/images.ts";
import { type Mirror, startMirror } from "../support/mirror.ts";
import { startUpstream, type Upstream } from "../support/upstream.ts";
import { run, tempDir } from "../support/tools.ts";

const ALICE = { username: "alice", password: "alice-upstream-pw" };
const BOB = { username: "bob", password: "bob-upstream-pw" };
const WRONG = { username: "alice", password: "not-her-password" };
const REPO = "private.test/team/secret";

function basic(c: { username: string; password: string }): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString("base64")}`;
}

const creds = (c: { username: string; password: string }) => `${c.username}:${c.password}`;

/** GET through the mirror; the status, the OCI error code (if any), and the challenge. */
async function get(mirror: Mirror, path: string, who?: { username: string; password: string }) {
  const response = await mirror.fetch(path, { headers: who ? { authorization: basic(who) } : {} });
  const text = await response.text();
  let code: string | undefined;
  if (!response.ok) code = JSON.parse(text).errors?.[0]?.code;
  return {
    status: response.status,
    code,
    challenge: response.headers.get("www-authenticate"),
    cache: response.headers.get("x-cache"),
    text,
  };
}

function passthroughMirror(up: Upstream, extra: Record<string, unknown> = {}) {
  return startMirror({
    upstreams: [{
      namespace: "private.test",
      host: up.host,
      tls: false,
      // The mirror's own credentials fetch the content; the client's decide who gets it.
      username: up.username,
      password: up.password,
      auth: "passthrough",
      ...extra,
    }],
  });
}

/**
 * `podman login` as alice, then a pull of REPO:1 whose digest must be the image's; returns the
 * podman command bound to that login's auth file.
 */
async function podmanLoginAndPull(
  podman: Awaited<ReturnType<typeof podmanClient>>,
  authFile: string,
  mirror: Mirror,
  image: Image,
) {
  const env = { REGISTRY_AUTH_FILE: authFile };
  const pm = (args: string[], check = false) => podman.podman(args, { env, check });
  const login = await pm([
    "login",
    "--tls-verify=false",
    "-u",
    ALICE.username,
    "-p",
    ALICE.password,
    mirror.host,
  ]);
  assertEquals(login.code, 0, login.stderr);
  await pm(["pull", "--tls-verify=false", `${mirror.host}/${REPO}:1`], true);
  const inspected = await pm(
    ["image", "inspect", "--format", "{{.Digest}}", `${mirror.host}/${REPO}:1`],
    true,
  );
  assertEquals(inspected.stdout.trim(), image.digest);
  return pm;
}

function assertNoSecrets(mirror: Mirror, up: Upstream) {
  const logs = mirror.logs();
  for (const secret of [ALICE.password, BOB.password, WRONG.password, up.password!]) {
    assert(!logs.includes(secret), `the mirror's output contains "${secret.slice(0, 4)}..."`);
  }
}

Deno.test("passthrough (htpasswd upstream): cached content only for clients upstream accepts", async (t) => {
  await using up = await startUpstream({ auth: "basic", users: [ALICE] });
  await using dir = await tempDir("passthrough-e2e-");
  const image = await pushImage(up, "team/secret", "1", buildImage({ layers: 2 }));
  await using mirror = await passthroughMirror(up);
  const layer = image.layers[0].digest;

  await t.step("anonymous: 401 with a Basic challenge, on the ping too", async () => {
    up.clearLog(); // the push
    const ping = await get(mirror, "/v2/");
    assertEquals([ping.status, ping.challenge], [401, 'Basic realm="oci-registry"']);
    const manifest = await get(mirror, `/v2/${REPO}/manifests/1`);
    assertEquals([manifest.status, manifest.code], [401, "UNAUTHORIZED"]);
    assertEquals(manifest.challenge, 'Basic realm="oci-registry"');
    assertEquals(await up.count({ path: "/v2/team/" }), 0, "nothing asked upstream");
  });

  await t.step("alice (skopeo --src-creds) pulls byte for byte; the cache fills", async () => {
    up.clearLog();
    await skopeoPullDir({ host: mirror.host, creds: creds(ALICE) }, REPO, "1", dir.join("a1"));
    await assertDirImage(dir.join("a1"), image);
    // The check: one HEAD of the manifest without credentials (the challenge), one with
    // alice's; the mirror's own fill used GETs with its configured credentials.
    const heads = up.requests().filter((e) => e.method === "HEAD");
    assertEquals(heads.map((e) => `${e.path} ${e.status}`), [
      "/v2/team/secret/manifests/1 401",
      "/v2/team/secret/manifests/1 200",
    ]);
    assertEquals(await up.countBlobGets(layer), 1);
  });

  await t.step("the content is cached, yet wrong credentials get 401", async () => {
    const cached = await get(mirror, `/v2/${REPO}/blobs/${layer}`, ALICE);
    assertEquals([cached.status, cached.cache], [200, "hit"]);
    for (const path of ["manifests/1", `manifests/${image.digest}`, `blobs/${layer}`]) {
      const wrong = await get(mirror, `/v2/${REPO}/${path}`, WRONG);
      assertEquals([wrong.status, wrong.code], [401, "UNAUTHORIZED"], path);
      assertEquals(wrong.challenge, 'Basic realm="oci-registry"');
      assert(!wrong.text.includes("tar"), path);
    }
    const tags = await get(mirror, `/v2/${REPO}/tags/list`, WRONG);
    assertEquals([tags.status, tags.code], [401, "UNAUTHORIZED"]);
    const skopeo = await skopeoPullDir(
      { host: mirror.host, creds: creds(WRONG) },
      REPO,
      "1",
      dir.join("wrong"),
    ).then(() => undefined, (e: Error) => e.message);
    assert(skopeo !== undefined, "skopeo pulled with a wrong password");
    assertMatch(skopeo, /unauthorized|401/i);
  });

  await t.step("checks are remembered: a second pull asks upstream nothing", async () => {
    up.clearLog();
    await skopeoPullDir({ host: mirror.host, creds: creds(ALICE) }, REPO, "1", dir.join("a2"));
    await assertDirImage(dir.join("a2"), image);
    assertEquals(await up.count(), 0, "alice's check (and the content) came from the cache");
    // A refusal is remembered briefly too: the same wrong password twice, one upstream HEAD.
    const other = { username: "carol", password: "whatever" };
    assertEquals((await get(mirror, `/v2/${REPO}/manifests/1`, other)).status, 401);
    assertEquals((await get(mirror, `/v2/${REPO}/blobs/${layer}`, other)).status, 401);
    assertEquals(await up.count({ method: "HEAD" }), 1);
  });

  await t.step("podman login, then pull; podman with a wrong password is refused", async () => {
    await using podman = await podmanClient();
    const pm = await podmanLoginAndPull(podman, dir.join("podman-auth.json"), mirror, image);
    await pm(["logout", mirror.host], true);
    await pm(["rmi", "-a"], true);
    const refused = await pm([
      "pull",
      "--tls-verify=false",
      "--creds",
      creds(WRONG),
      `${mirror.host}/${REPO}:1`,
    ]);
    assert(refused.code !== 0, "podman pulled with a wrong password");
    assertMatch(refused.stderr, /unauthorized|401/i);
  });

  await t.step(
    "upstream down: a confirmed client is served, unconfirmed ones get 503",
    async () => {
      await up.stop();
      const alice = await get(mirror, `/v2/${REPO}/manifests/${image.digest}`, ALICE);
      assertEquals([alice.status, alice.cache], [200, "hit"]);
      const stranger = await get(mirror, `/v2/${REPO}/manifests/${image.digest}`, {
        username: "dave",
        password: "never-checked",
      });
      assertEquals([stranger.status, stranger.code], [503, "UNAVAILABLE"]);
      await up.start();
    },
  );

  const metrics = await (await mirror.fetch("/metrics")).text();
  assertMatch(metrics, /oci_registry_passthrough_checks_total\{[^}]*result="allowed"\} [1-9]/);
  assertMatch(metrics, /oci_registry_passthrough_checks_total\{[^}]*result="unauthorized"\}/);
  assertNoSecrets(mirror, up);
});

Deno.test("passthrough (token upstream): valid credentials without the scope get 403", async () => {
  // bob is a valid account of the token server, but may read nothing under team/.
  await using up = await startUpstream({
    auth: "token",
    users: [{ ...ALICE, repositories: ["team/"] }, { ...BOB, repositories: ["bob/"] }],
  });
  await using dir = await tempDir("passthrough-token-");
  const image = await pushImage(up, "team/secret", "1", buildImage({ layers: 1 }));
  await using mirror = await passthroughMirror(up, { passthrough_ttl: "30s" });
  const tokens = up.tokenServer!;

  await skopeoPullDir({ host: mirror.host, creds: creds(ALICE) }, REPO, "1", dir.join("a"));
  await assertDirImage(dir.join("a"), image);
  const blob = `/v2/${REPO}/blobs/${image.layers[0].digest}`;
  assertEquals((await get(mirror, blob, ALICE)).cache, "hit");

  tokens.clearLog();
  up.clearLog();
  for (const path of [`/v2/${REPO}/manifests/1`, blob]) {
    const bob = await get(mirror, path, BOB);
    assertEquals([bob.status, bob.code], [403, "DENIED"], path);
    const wrong = await get(mirror, path, { ...BOB, password: "nope" });
    assertEquals([wrong.status, wrong.code], [401, "UNAUTHORIZED"], path);
  }
  // One token request per credential (bob: a token without the scope; the wrong password: a
  // 401), each remembered for the second path.
  assertEquals(
    tokens.requests().map((r) => `${r.account || "-"} ${r.status} ${r.granted[0]?.actions}`),
    ["bob 200 ", "- 401 undefined"],
  );
  const skopeo = await skopeoPullDir(
    { host: mirror.host, creds: creds(BOB) },
    REPO,
    "1",
    dir.join("b"),
  ).then(() => undefined, (e: Error) => e.message);
  assert(skopeo !== undefined, "bob pulled with skopeo");
  assertMatch(skopeo, /denied|403/i);
  assertNoSecrets(mirror, up);
});

/** A client's token flow: the challenge, a token from its realm with Basic credentials. */
async function tokenFor(mirror: Mirror, path: string, who: { username: string; password: string }) {
  const first = await mirror.fetch(path);
  await first.body?.cancel();
  assertEquals(first.status, 401);
  const challenge = first.headers.get("www-authenticate")!;
  assertMatch(challenge, /^Bearer realm="[^"]+\/token",service="oci-registry",scope="[^"]+"$/);
  const realm = /realm="([^"]+)"/.exec(challenge)![1];
  const scope = /scope="([^"]+)"/.exec(challenge)![1];
  const response = await fetch(
    `${realm}?service=oci-registry&scope=${encodeURIComponent(scope)}`,
    { headers: { authorization: basic(who) } },
  );
  const body = await response.json();
  return { status: response.status, token: body.token as string | undefined };
}

Deno.test("passthrough with --auth-config: the token endpoint asks the upstream", async (t) => {
  await using up = await startUpstream({
    auth: "token",
    users: [{ ...ALICE, repositories: ["team/"] }, { ...BOB, repositories: ["bob/"] }],
  });
  await using dir = await tempDir("passthrough-auth-");
  const image = await pushImage(up, "team/secret", "1", buildImage({ layers: 1 }));
  // carol is a user of the mirror with every right its rules can give: none of it counts here.
  const carol = { username: "carol", password: "carol-mirror-pw" };
  const hash = await run("htpasswd", ["-Bbn", carol.username, carol.password], { check: true });
  await Deno.writeTextFile(dir.join("htpasswd"), hash.stdout.trim() + "\n");
  await Deno.writeTextFile(
    dir.join("auth.yaml"),
    "htpasswd: htpasswd\nrules:\n  - namespace: '**'\n    users: [carol]\n    actions: [pull]\n",
  );
  await using mirror = await startMirror({
    upstreams: [{
      namespace: "private.test",
      host: up.host,
      tls: false,
      username: up.username,
      password: up.password,
      auth: "passthrough",
    }],
    extraArgs: ["--auth-config", dir.join("auth.yaml")],
  });
  const manifest = `/v2/${REPO}/manifests/1`;

  await t.step(
    "tokens carry upstream's verdict: alice 200, bob 403, wrong and carol 401",
    async () => {
      const alice = await tokenFor(mirror, manifest, ALICE);
      assertEquals(alice.status, 200);
      const served = await mirror.fetch(manifest, {
        headers: { authorization: `Bearer ${alice.token}` },
      });
      assertEquals([served.status, await served.text()], [
        200,
        new TextDecoder().decode(image.manifest.bytes),
      ]);
      const bob = await tokenFor(mirror, manifest, BOB);
      assertEquals(bob.status, 200);
      const refused = await mirror.fetch(manifest, {
        headers: { authorization: `Bearer ${bob.token}` },
      });
      assertEquals([refused.status, (await refused.json()).errors[0].code], [403, "DENIED"]);
      assertEquals((await tokenFor(mirror, manifest, WRONG)).status, 401);
      assertEquals((await tokenFor(mirror, manifest, carol)).status, 401);
      // Basic straight on the request works too (curl -u), checked the same way.
      assertEquals((await get(mirror, manifest, ALICE)).status, 200);
      assertEquals((await get(mirror, manifest, BOB)).status, 403);
    },
  );

  await t.step("skopeo --src-creds and podman login pull; bob cannot", async () => {
    await skopeoPullDir({ host: mirror.host, creds: creds(ALICE) }, REPO, "1", dir.join("a"));
    await assertDirImage(dir.join("a"), image);
    const skopeo = await skopeoPullDir(
      { host: mirror.host, creds: creds(BOB) },
      REPO,
      "1",
      dir.join("b"),
    ).then(() => undefined, (e: Error) => e.message);
    assert(skopeo !== undefined, "bob pulled with skopeo");
    await using podman = await podmanClient();
    await podmanLoginAndPull(podman, dir.join("podman-auth.json"), mirror, image);
  });
  assertNoSecrets(mirror, up);
  assert(!mirror.logs().includes(carol.password));
});
