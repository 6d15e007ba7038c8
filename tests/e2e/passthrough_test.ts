/**
 * Credential pass-through (`auth: passthrough`) against real upstreams and real clients: a
 * mirror process in front of distribution (htpasswd, and token auth with a token server that
 * gives one valid user no access to the repository), pulled from with skopeo --src-creds,
 * podman login, plain HTTP, containerd (`ctr images pull --user`, hosts.toml: `?ns=`) and a
 * private dockerd (`docker login MIRROR` then `docker pull MIRROR/private.test/...`, and
 * `registry-mirrors` with the passthrough namespace as the mirror's default), the last two also
 * through the mirror's token endpoint (--auth-config).
 *
 * What must hold: content cached for one client is not served to another whose own upstream
 * credentials are wrong (401) or lack access (403), nor to anyone anonymous (401 with a
 * challenge); an allowed client pulls byte for byte; the check is one upstream request per
 * client and repository within its TTL; an unreachable upstream fails closed for credentials
 * it never confirmed.
 */
import { Buffer } from "node:buffer";
import { assert, assertEquals, assertMatch } from "../support/assert.ts";
import { assertContainerdImage, podmanClient, startContainerd } from "../support/clients.ts";
import { assertDockerImage, startDockerd } from "../support/dockerd.ts";
import {
  assertDirImage,
  blobsOf,
  buildImage,
  type Image,
  pushImage,
  skopeoPullDir,
} from "../support/images.ts";
import { type Mirror, type MirrorOptions, startMirror } from "../support/mirror.ts";
import {
  assertAllServed,
  assertOnlyMirrorAskedUpstream,
  escapeRegExp,
  type MirrorRequest,
  mirrorRequests,
  show,
} from "../support/mirror_log.ts";
import { startUpstream, type Upstream } from "../support/upstream.ts";
import { run, type TempDir, tempDir } from "../support/tools.ts";

const ALICE = { username: "alice", password: "alice-upstream-pw" };
const BOB = { username: "bob", password: "bob-upstream-pw" };
const WRONG = { username: "alice", password: "not-her-password" };
const CAROL = { username: "carol", password: "carol-mirror-pw" };
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

function passthroughMirror(
  up: Upstream,
  extra: Record<string, unknown> = {},
  options: Omit<MirrorOptions, "upstreams"> = {},
) {
  return startMirror({
    ...options,
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

function assertNoSecrets(mirror: Mirror, up: Upstream, more: string[] = []) {
  const logs = mirror.logs();
  for (const secret of [ALICE.password, BOB.password, WRONG.password, up.password!, ...more]) {
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
    // The login is checked upstream: a wrong password fails there, with one GET /v2/ (Basic
    // goes up front since the upstream asked for it), and nothing is stored.
    up.clearLog();
    const wrongLogin = await podman.podman([
      "login",
      "--tls-verify=false",
      "-u",
      WRONG.username,
      "-p",
      WRONG.password,
      mirror.host,
    ], { env: { REGISTRY_AUTH_FILE: dir.join("podman-wrong.json") }, check: false });
    assert(wrongLogin.code !== 0, "podman logged in with a wrong password");
    assertMatch(wrongLogin.stderr, /401|unauthorized|invalid username/i);
    assertEquals(up.requests().map((e) => `${e.method} ${e.path} ${e.status}`), ["GET /v2/ 401"]);
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

  await t.step("a guessing burst: 401 five times, then 429 without asking upstream", async () => {
    up.clearLog();
    const answers = [];
    for (let i = 0; i < 12; i++) {
      answers.push(
        await get(mirror, `/v2/${REPO}/manifests/1`, { username: "mallory", password: `g${i}` }),
      );
    }
    assertEquals(answers.map((a) => a.status), [...Array(5).fill(401), ...Array(7).fill(429)]);
    assertEquals(answers[5].code, "TOOMANYREQUESTS");
    assertMatch(answers[5].text, /too many credentials refused by upstream private\.test/);
    // Each 401 was one upstream refusal; no 429 asked upstream anything.
    assertEquals(await up.count({ path: "/v2/team/secret/manifests/1" }), 5);
    // alice, from the same address, is still served; the process is up.
    assertEquals((await get(mirror, `/v2/${REPO}/manifests/1`, ALICE)).status, 200);
    assertEquals((await mirror.fetch("/v2/")).status, 401);
  });

  const metrics = await (await mirror.fetch("/metrics")).text();
  assertMatch(metrics, /oci_registry_passthrough_checks_total\{[^}]*result="allowed"\} [1-9]/);
  assertMatch(metrics, /oci_registry_passthrough_checks_total\{[^}]*result="locked"\} [1-9]/);
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

/**
 * carol is a user of the mirror with every right its rules can give: none of it counts in a
 * passthrough namespace. Writes her htpasswd and the rules to `dir`; returns the --auth-config.
 */
async function mirrorUsers(dir: TempDir): Promise<string> {
  const hash = await run("htpasswd", ["-Bbn", CAROL.username, CAROL.password], { check: true });
  await Deno.writeTextFile(dir.join("htpasswd"), hash.stdout.trim() + "\n");
  await Deno.writeTextFile(
    dir.join("auth.yaml"),
    "htpasswd: htpasswd\nrules:\n  - namespace: '**'\n    users: [carol]\n    actions: [pull]\n",
  );
  return dir.join("auth.yaml");
}

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
  await using mirror = await passthroughMirror(up, {}, {
    extraArgs: ["--auth-config", await mirrorUsers(dir)],
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
      assertEquals((await tokenFor(mirror, manifest, CAROL)).status, 401);
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
  assert(!mirror.logs().includes(CAROL.password));
});

// ---------------------------------------------------------------------------------------------
// containerd (`ctr --user`) and dockerd (`docker login`)

type Account = { username: string; password: string };

/**
 * Credentials of one client: an account the token server lets pull team/, a valid account it
 * lets pull nothing there, and the first one's name with a wrong password. Each client has its
 * own, so that what the upstream is asked shows each client's check (a pass is remembered for
 * passthrough_ttl, a refusal for 5 s).
 */
function clientAccounts(client: string) {
  const allowed = { username: `${client}-dev`, password: `${client}-dev-pw` };
  const noAccess = { username: `${client}-other`, password: `${client}-other-pw` };
  return {
    allowed,
    noAccess,
    wrong: { ...allowed, password: `${client}-wrong-pw` },
    users: [{ ...allowed, repositories: ["team/"] }, { ...noAccess, repositories: ["other/"] }],
    secrets: [allowed.password, noAccess.password, `${client}-wrong-pw`],
  };
}

/**
 * What the upstream was asked since its last clearLog (all of it by the mirror): its token
 * server's answers (`account status [actions granted]`, `-` for a refused login) and the
 * registry's (`METHOD path status`).
 */
async function upstreamSaw(up: Upstream) {
  await assertOnlyMirrorAskedUpstream(up);
  return {
    tokens: up.tokenServer!.requests().map((r) =>
      `${r.account || "-"} ${r.status} [${r.granted.flatMap((g) => g.actions).join(",")}]`
    ),
    registry: up.requests().map((r) => `${r.method} ${r.path} ${r.status}`),
  };
}

/**
 * The check of one client's credentials for REPO:1 as the token upstream sees it: a HEAD of the
 * manifest (the gate), or a one-entry tag list (the mirror's token endpoint, --auth-config).
 */
function checkOf(
  account: Account,
  verdict: "allowed" | "denied" | "unauthorized",
  probe: "manifest" | "tags" = "manifest",
) {
  const asked = probe === "manifest"
    ? "HEAD /v2/team/secret/manifests/1"
    : "GET /v2/team/secret/tags/list?n=1";
  return {
    allowed: {
      tokens: [`${account.username} 200 [pull]`],
      registry: [`${asked} 401`, `${asked} 200`],
    },
    denied: { tokens: [`${account.username} 200 []`], registry: [`${asked} 401`, `${asked} 401`] },
    unauthorized: { tokens: ["- 401 []"], registry: [`${asked} 401`] },
  }[verdict];
}

/** A login's check as the token upstream sees it: its `GET /v2/` and a token for no scope. */
function loginCheckOf(account: Account, valid: boolean) {
  return valid
    ? { tokens: [`${account.username} 200 []`], registry: ["GET /v2/ 401", "GET /v2/ 200"] }
    : { tokens: ["- 401 []"], registry: ["GET /v2/ 401"] };
}

/** What `docker login SERVER` stores, written directly (for credentials a login now refuses). */
function storeDockerLogin(config: string, server: string, who: Account) {
  return Deno.writeTextFile(
    `${config}/config.json`,
    JSON.stringify({ auths: { [server]: { auth: Buffer.from(creds(who)).toString("base64") } } }),
  );
}

/**
 * A refused pull: nothing under /v2/ was served, no blob asked for, and the client's credentials
 * got `status`, on its last manifest request or, with --auth-config, from the token endpoint.
 */
function assertRefused(requests: MirrorRequest[], status: 401 | 403) {
  for (const r of requests.filter((r) => r.path.startsWith("/v2/"))) {
    assert(r.status < 200 || r.status >= 300, `nothing served:\n${show(requests)}`);
    assert(!r.path.includes("/blobs/"), `no blob asked for:\n${show(requests)}`);
  }
  const answers = requests.filter((r) =>
    r.path.includes("/manifests/") || (r.method === "GET" && r.path.startsWith("/token"))
  );
  assert(answers.length > 0, `the client asked the mirror:\n${show(requests)}`);
  // The first try of a request carries no credentials (401): the one with them gets `status`.
  assertEquals(answers.at(-1)!.status, status, show(requests));
  if (status === 401) {
    const manifests = requests.filter((r) => r.path.includes("/manifests/"));
    assertEquals(manifests.filter((r) => r.status !== 401), [], show(requests));
  }
}

Deno.test("passthrough (token upstream), ctr --user and docker login, with and without --auth-config: 200, 403, 401 though cached", async (t) => {
  const ctr = clientAccounts("ctr");
  const dk = clientAccounts("docker");
  const hub = clientAccounts("hub");
  await using up = await startUpstream({
    auth: "token",
    users: [...ctr.users, ...dk.users, ...hub.users],
  });
  const image = await pushImage(up, "team/secret", "1", buildImage({ layers: 2 }));
  // The default namespace is the passthrough one, for Docker's registry-mirrors (its step).
  await using mirror = await passthroughMirror(up, {}, { defaultNamespace: "private.test" });
  await using dir = await tempDir("passthrough-daemons-");
  await using containerd = await startContainerd();
  await using docker = await startDockerd({ registryMirror: mirror.url });
  const reset = () => {
    mirror.clearLogs();
    up.clearLog();
  };
  const ref = `${REPO}:1`;
  const pull = (who: Account) =>
    containerd.pull(ref, { mirror: mirror.host, user: creds(who), check: false });

  await t.step(
    "ctr --user, allowed account: byte for byte; the mirror fills its cache",
    async () => {
      reset();
      const pulled = await pull(ctr.allowed);
      assertEquals(pulled.code, 0, pulled.stderr);
      await assertContainerdImage(containerd, ref, image);
      const requests = await mirrorRequests(mirror);
      // containerd tries each request without credentials first (401), then with them.
      assertAllServed(requests.filter((r) => r.status !== 401));
      const base = "/v2/team/secret";
      assertEquals(
        [...new Set(requests.filter((r) => r.status === 200).map((r) => r.path))].sort(),
        [
          `${base}/manifests/1`,
          `${base}/manifests/${image.digest}`,
          ...blobsOf(image).map((b) => `${base}/blobs/${b.digest}`),
        ].map((p) => `${p}?ns=private.test`).sort(),
        show(requests),
      );
      const saw = await upstreamSaw(up);
      // One check with ctr's credentials, then the fill with the mirror's own (testuser).
      assertEquals(saw.tokens, [...checkOf(ctr.allowed, "allowed").tokens, "testuser 200 [pull]"]);
      assertEquals(
        saw.registry.filter((l) => l.startsWith("HEAD")),
        checkOf(ctr.allowed, "allowed").registry,
      );
      for (const blob of blobsOf(image)) assertEquals(await up.countBlobGets(blob.digest), 1);
    },
  );

  await t.step(
    "ctr --user, no access (403) and a wrong password (401): refused, though cached",
    async () => {
      await containerd.removeAllImages();
      const cached = await get(mirror, `/v2/${REPO}/blobs/${image.layers[0].digest}`, ctr.allowed);
      assertEquals([cached.status, cached.cache], [200, "hit"]);
      for (const [who, status] of [[ctr.noAccess, 403], [ctr.wrong, 401]] as const) {
        reset();
        const refused = await pull(who);
        assert(!refused.success, `ctr pulled as ${who.username}`);
        assertMatch(
          refused.stderr,
          new RegExp(`pulling from host ${escapeRegExp(mirror.host)} failed .*: ${status} `),
        );
        const requests = await mirrorRequests(mirror);
        assertRefused(requests, status);
        for (const r of requests) {
          assertEquals(
            r.path,
            `/v2/team/secret/manifests/1?ns=private.test`,
          );
        }
        assertEquals(
          await upstreamSaw(up),
          checkOf(who, status === 403 ? "denied" : "unauthorized"),
          `${who.username}: one check, nothing fetched`,
        );
      }
      assertEquals(await containerd.images(), []);
    },
  );

  const config = dir.join("docker-config");
  const cli = (args: string[]) => docker.cli(args, { env: { DOCKER_CONFIG: config } });
  const dockerLogin = (who: Account, server: string) =>
    cli(["login", "-u", who.username, "-p", who.password, server]);
  const mirrorRef = `${mirror.host}/${ref}`;

  await t.step(
    "docker login, docker pull MIRROR/private.test/...: byte for byte, from the cache",
    async () => {
      reset();
      const login = await dockerLogin(dk.allowed, mirror.host);
      assertEquals(login.code, 0, login.stderr);
      assertEquals(show(await mirrorRequests(mirror)), "GET /v2/ 401\nGET /v2/ 200");
      assertEquals(await upstreamSaw(up), loginCheckOf(dk.allowed, true), "the login, checked");
      reset();
      const pulled = await cli(["pull", mirrorRef]);
      assertEquals(pulled.code, 0, pulled.stderr);
      assertMatch(pulled.stdout, new RegExp(`Digest: ${image.digest}`));
      await assertDockerImage(docker, mirrorRef, `${mirror.host}/${REPO}`, image, image.digest);
      const requests = await mirrorRequests(mirror);
      assertEquals(requests[0], { method: "GET", path: "/v2/", status: 401 }, show(requests));
      assertAllServed(requests.slice(1));
      const base = `/v2/${REPO}`;
      assertEquals(
        requests.slice(1).map((r) => `${r.method} ${r.path}`).sort(),
        [
          `HEAD ${base}/manifests/1`,
          `GET ${base}/manifests/${image.digest}`,
          ...blobsOf(image).map((b) => `GET ${base}/blobs/${b.digest}`),
        ].sort(),
      );
      // The check, and nothing else: the content came from the cache ctr's pull filled.
      assertEquals(await upstreamSaw(up), checkOf(dk.allowed, "allowed"));
      await cli(["rmi", mirrorRef]);
    },
  );

  await t.step(
    "docker login as no access (403) or with a wrong password (401): the pull fails",
    async () => {
      const cases = [
        [dk.noAccess, 403, /denied: upstream private\.test does not let these credentials pull/],
        [dk.wrong, 401, /unauthorized: upstream private\.test did not accept these credentials/],
      ] as const;
      for (const [who, status, message] of cases) {
        // Valid credentials log in (the mirror cannot tell which repository they are for); a
        // wrong password fails at the login. A stale login would still be sent: written here.
        reset();
        const login = await dockerLogin(who, mirror.host);
        assertEquals(await upstreamSaw(up), loginCheckOf(who, status === 403), who.username);
        if (status === 403) {
          assertEquals(login.code, 0, login.stderr);
        } else {
          assert(!login.success, `docker logged in as ${who.username} with a wrong password`);
          assertMatch(login.stderr, /401 Unauthorized/);
          assertEquals(show(await mirrorRequests(mirror)), "GET /v2/ 401\nGET /v2/ 401");
          await storeDockerLogin(config, mirror.host, who);
        }
        reset();
        const refused = await cli(["pull", mirrorRef]);
        assert(!refused.success, `docker pulled as ${who.username}`);
        assertMatch(refused.stderr, message);
        const requests = await mirrorRequests(mirror);
        assertRefused(requests, status);
        assertEquals(
          await upstreamSaw(up),
          checkOf(who, status === 403 ? "denied" : "unauthorized"),
          who.username,
        );
      }
      assertEquals((await cli(["images", "-q"])).stdout.trim(), "");
    },
  );

  await t.step(
    "registry-mirrors: Docker Hub names, the passthrough namespace as default",
    async () => {
      // What `docker login` for Docker Hub writes (Docker Hub itself is unreachable here): dockerd
      // sends these credentials to its registry mirror.
      const hubLogin = (who: Account) =>
        storeDockerLogin(config, "https://index.docker.io/v1/", who);
      await hubLogin(hub.allowed);
      reset();
      const pulled = await cli(["pull", "team/secret:1"]);
      assertEquals(pulled.code, 0, pulled.stderr);
      await assertDockerImage(docker, "team/secret:1", "team/secret", image, image.digest);
      const requests = await mirrorRequests(mirror);
      assertEquals(requests[0], { method: "GET", path: "/v2/", status: 401 }, show(requests));
      assertAllServed(requests.slice(1));
      for (const r of requests.slice(1)) {
        assert(
          r.path.startsWith("/v2/team/secret/"),
          show(requests),
        );
      }
      assertEquals(await upstreamSaw(up), checkOf(hub.allowed, "allowed"));
      await cli(["rmi", "team/secret:1"]);

      for (const [who, status] of [[hub.noAccess, 403], [hub.wrong, 401]] as const) {
        await hubLogin(who);
        reset();
        const refused = await cli(["pull", "team/secret:1"]);
        assert(!refused.success, `docker pulled as ${who.username}`);
        // On the mirror's refusal dockerd falls back to Docker Hub, whose error it then prints.
        assertMatch(refused.stderr, /registry-1\.docker\.io.*proxyconnect/);
        assertRefused(await mirrorRequests(mirror), status);
        assertEquals(
          await upstreamSaw(up),
          checkOf(who, status === 403 ? "denied" : "unauthorized"),
          who.username,
        );
      }
    },
  );

  // The same clients against a mirror with users of its own (--auth-config, none of them an
  // upstream account): the Docker token flow, whose endpoint checks passthrough scopes upstream.
  await using withUsers = await passthroughMirror(up, {}, {
    extraArgs: ["--auth-config", await mirrorUsers(dir)],
  });
  const resetUsers = () => {
    withUsers.clearLogs();
    up.clearLog();
  };
  const pullWithUsers = (who: Account) =>
    containerd.pull(ref, { mirror: withUsers.host, user: creds(who), check: false });

  await t.step(
    "--auth-config, ctr --user: a token for the upstream account, byte for byte",
    async () => {
      await containerd.removeAllImages();
      resetUsers();
      const pulled = await pullWithUsers(ctr.allowed);
      assertEquals(pulled.code, 0, pulled.stderr);
      await assertContainerdImage(containerd, ref, image);
      const requests = await mirrorRequests(withUsers);
      // containerd asks a token for the challenge's scope and for one of its own: the repository
      // without the registry's name (which the mirror would read as docker.io/team/secret).
      // (POST, the OAuth2 form, is 405 here: containerd then GETs.)
      const tokens = requests.filter((r) => r.path.startsWith("/token"));
      assert(tokens.length > 0, show(requests));
      for (const r of tokens) {
        assertEquals(`${r.method} ${r.status}`, r.method === "POST" ? "POST 405" : "GET 200");
        if (r.method !== "GET") continue;
        assertEquals(new URL(r.path, withUsers.url).searchParams.getAll("scope"), [
          "repository:private.test/team/secret:pull",
          "repository:team/secret:pull",
        ]);
      }
      assertAllServed(requests.filter((r) => r.path.startsWith("/v2/") && r.status !== 401));
      const saw = await upstreamSaw(up);
      assertEquals(saw.tokens, [...checkOf(ctr.allowed, "allowed").tokens, "testuser 200 [pull]"]);
      assertEquals(
        saw.registry.filter((l) => l.includes("/tags/list")),
        checkOf(ctr.allowed, "allowed", "tags").registry,
      );
      for (const blob of blobsOf(image)) assertEquals(await up.countBlobGets(blob.digest), 1);
    },
  );

  await t.step(
    "--auth-config, ctr --user: no access (403) and a wrong password (401)",
    async () => {
      await containerd.removeAllImages();
      const cases = [
        [ctr.noAccess, 403, /failed with status code \[manifests 1\]: 403 Forbidden/],
        [ctr.wrong, 401, /failed to fetch oauth token: unexpected status: 401 Unauthorized/],
      ] as const;
      for (const [who, status, message] of cases) {
        resetUsers();
        const refused = await pullWithUsers(who);
        assert(!refused.success, `ctr pulled as ${who.username}`);
        assertMatch(refused.stderr, message);
        const requests = await mirrorRequests(withUsers);
        assertRefused(requests, status);
        // 403: a token recording upstream's refusal, then the manifest refused; 401: no token.
        const token = requests.find((r) => r.method === "GET" && r.path.startsWith("/token"));
        assertEquals(token?.status, status === 403 ? 200 : 401, show(requests));
        assertEquals(
          await upstreamSaw(up),
          checkOf(who, status === 403 ? "denied" : "unauthorized", "tags"),
          who.username,
        );
      }
      assertEquals(await containerd.images(), []);
    },
  );

  await t.step(
    "--auth-config, docker logins with upstream credentials are never locked out",
    async () => {
      // No mirror user's, so checked upstream (once: the answer is remembered); accepted there,
      // none counts as a failed login. Counted, the sixth from this address would be 429.
      resetUsers();
      for (let i = 0; i < 7; i++) {
        const login = await dockerLogin(dk.allowed, withUsers.host);
        assertEquals(login.code, 0, `login ${i + 1}: ${login.stderr}`);
      }
      const tokens = (await mirrorRequests(withUsers)).filter((r) =>
        r.method === "GET" && r.path.startsWith("/token")
      );
      assertEquals(tokens.map((r) => r.status), Array(7).fill(200));
      assertEquals(await upstreamSaw(up), loginCheckOf(dk.allowed, true));
    },
  );

  await t.step("--auth-config, docker login and pull: 200, 403, 401", async () => {
    const ref2 = `${withUsers.host}/${ref}`;
    const cases = [
      [dk.allowed, 200, undefined],
      [dk.noAccess, 403, /denied: upstream private\.test does not let these credentials pull/],
      [dk.wrong, 401, /unauthorized: the upstream did not accept these credentials/],
    ] as const;
    for (const [who, status, message] of cases) {
      const login = await dockerLogin(who, withUsers.host);
      if (status === 401) {
        // Refused by the token endpoint, after the upstream refused the password.
        assert(!login.success, `docker logged in as ${who.username} with a wrong password`);
        assertMatch(login.stderr, /401 Unauthorized|unauthorized/);
        await storeDockerLogin(config, withUsers.host, who);
      } else {
        assertEquals(login.code, 0, login.stderr);
      }
      resetUsers();
      const pulled = await cli(["pull", ref2]);
      const requests = await mirrorRequests(withUsers);
      const token = requests.find((r) => r.path.startsWith("/token"));
      assertEquals(token?.status, status === 401 ? 401 : 200, show(requests));
      if (status === 200) {
        assertEquals(pulled.code, 0, pulled.stderr);
        await assertDockerImage(docker, ref2, `${withUsers.host}/${REPO}`, image, image.digest);
        assertAllServed(requests.filter((r) => r.path.startsWith("/v2/") && r.path !== "/v2/"));
        await cli(["rmi", ref2]);
      } else {
        assert(!pulled.success, `docker pulled as ${who.username}`);
        assertMatch(pulled.stderr, message!);
        assertRefused(requests, status);
      }
      const verdict = status === 200 ? "allowed" : status === 403 ? "denied" : "unauthorized";
      // The check, and nothing else: the content is in this mirror's cache since ctr's pull.
      assertEquals(await upstreamSaw(up), checkOf(who, verdict, "tags"), who.username);
    }
  });
  assertNoSecrets(mirror, up, [...ctr.secrets, ...dk.secrets, ...hub.secrets]);
  assertNoSecrets(withUsers, up, [...ctr.secrets, ...dk.secrets, CAROL.password]);
});
