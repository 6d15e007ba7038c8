import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { defaultUpstream, type UpstreamConfig, UpstreamRegistry } from "../config/upstreams.ts";
import { RegistryError } from "../oci/errors.ts";
import {
  type AccessProbe,
  type AccessVerdict,
  BASIC_CHALLENGE,
  type ClientCredentials,
  NEGATIVE_TTL_MS,
  PassthroughGate,
  passthroughKey,
  STALE_GRACE_MS,
} from "./passthrough.ts";
import { TokenSigner } from "./token.ts";

const ALICE = { username: "alice", password: "alice-secret" };
const ADDRESS = "10.0.0.1";
const PROBE: AccessProbe = { kind: "manifest", reference: "1" };

function registry(extra: Partial<UpstreamConfig> = {}): UpstreamRegistry {
  return new UpstreamRegistry([
    { ...defaultUpstream("private.test"), configured: true, auth: "passthrough", ...extra },
    { ...defaultUpstream("public.test"), configured: true },
  ]);
}

/** A checker whose answers the test decides, counting the calls it gets. */
function checker(answer: (c: ClientCredentials, repository: string) => Promise<AccessVerdict>) {
  const calls: { repository: string; username: string; probe: AccessProbe }[] = [];
  return {
    calls,
    checkAccess(_ns: string, repository: string, probe: AccessProbe, c: ClientCredentials) {
      calls.push({ repository, username: c.username, probe });
      return answer(c, repository);
    },
  };
}

function request(authorization?: string): Request {
  return new Request("http://mirror/v2/private.test/team/app/manifests/1", {
    headers: authorization ? { authorization } : {},
  });
}

const basic = (c: ClientCredentials) =>
  `Basic ${Buffer.from(`${c.username}:${c.password}`).toString("base64")}`;

async function status(promise: Promise<unknown>): Promise<unknown> {
  try {
    return await promise;
  } catch (e) {
    assert.ok(e instanceof RegistryError, String(e));
    return e.status;
  }
}

Deno.test("passthrough: who is admitted, and with which status the others are not", async () => {
  const fake = checker((c) =>
    Promise.resolve(
      c.password === ALICE.password
        ? (c.username === "alice" ? "allowed" : "denied")
        : "unauthorized",
    )
  );
  const gate = new PassthroughGate({ upstreams: registry(), checker: fake });
  assert.ok(gate.covers("private.test"));
  assert.ok(!gate.covers("public.test"));
  assert.ok(gate.active);
  const admit = (authorization?: string) =>
    gate.admit(request(authorization), ADDRESS, "private.test", "team/app", PROBE, BASIC_CHALLENGE);
  assert.equal(await admit(basic(ALICE)), "alice");
  assert.equal(await status(admit(basic({ ...ALICE, username: "bob" }))), 403);
  assert.equal(await status(admit(basic({ ...ALICE, password: "wrong" }))), 401);
  assert.equal(await status(admit()), 401);
  assert.equal(await status(admit("Basic !!!")), 401);
  assert.equal(await status(admit("Bearer abc")), 401);
  const refusal = await admit().catch((e) => e as RegistryError);
  assert.equal(
    (refusal as RegistryError).headers["www-authenticate"],
    'Basic realm="oci-registry"',
  );
  // The anonymous and malformed requests never reached upstream.
  assert.equal(fake.calls.length, 3);
  assert.deepEqual(fake.calls[0].probe, PROBE);
});

Deno.test("passthrough: a pass is remembered for the TTL, a refusal for 5 s", async () => {
  let now = 1_000_000;
  let verdict: AccessVerdict = "allowed";
  const fake = checker(() => Promise.resolve(verdict));
  const gate = new PassthroughGate({
    upstreams: registry({ passthroughTtlMs: 30_000 }),
    checker: fake,
    now: () => now,
  });
  const check = (c = ALICE, repository = "team/app") =>
    gate.check(c, ADDRESS, "private.test", repository, PROBE);
  assert.equal(await check(), "allowed");
  now += 29_999;
  assert.equal(await check(), "allowed");
  assert.equal(fake.calls.length, 1, "within the TTL: no second check");
  // Other credentials, another repository: checks of their own.
  await check({ ...ALICE, password: "other" });
  await check(ALICE, "team/other");
  assert.equal(fake.calls.length, 3);
  // Past the TTL, upstream is asked again; now it refuses, and that is remembered briefly.
  now += 2;
  verdict = "denied";
  assert.equal(await check(), "denied");
  assert.equal(fake.calls.length, 4);
  now += NEGATIVE_TTL_MS - 1;
  assert.equal(await check(), "denied");
  assert.equal(fake.calls.length, 4);
  now += 2;
  verdict = "allowed";
  assert.equal(await check(), "allowed");
  assert.equal(fake.calls.length, 5);
});

Deno.test("passthrough: concurrent checks of one key share one upstream request", async () => {
  const releases: ((v: AccessVerdict) => void)[] = [];
  const fake = checker(() => new Promise((resolve) => releases.push(resolve)));
  const gate = new PassthroughGate({ upstreams: registry(), checker: fake });
  const all = Promise.all(
    Array.from({ length: 10 }, () => gate.check(ALICE, ADDRESS, "private.test", "team/app", PROBE)),
  );
  const other = gate.check({ ...ALICE, password: "x" }, ADDRESS, "private.test", "team/app", PROBE);
  await Promise.resolve();
  assert.equal(fake.calls.length, 2);
  releases[0]("allowed");
  assert.deepEqual(await all, Array(10).fill("allowed"));
  releases[1]("unauthorized");
  assert.equal(await other, "unauthorized");
});

Deno.test("passthrough: fails closed when upstream cannot answer, unless a pass is recent", async () => {
  let now = 0;
  let up = true;
  const fake = checker(() =>
    up
      ? Promise.resolve("allowed")
      : Promise.reject(new RegistryError("UNAVAILABLE", "cannot reach upstream x: refused"))
  );
  const gate = new PassthroughGate({ upstreams: registry(), checker: fake, now: () => now });
  const check = (c = ALICE) => gate.check(c, ADDRESS, "private.test", "team/app", PROBE);
  // Never checked: 503.
  up = false;
  assert.equal(await status(check()), 503);
  // Checked and passed, then upstream goes away: the pass holds for the grace period.
  up = true;
  await check();
  up = false;
  now += 61_000;
  assert.equal(await check(), "allowed");
  now = STALE_GRACE_MS - 1;
  assert.equal(await check(), "allowed");
  now = STALE_GRACE_MS + 1;
  const error = await check().catch((e) => e as RegistryError);
  assert.ok(error instanceof RegistryError);
  assert.equal(error.code, "UNAVAILABLE");
  assert.ok(!error.message.includes(ALICE.password));
  // A refusal is never served stale as a pass, and other credentials get nothing from it.
  assert.equal(await status(check({ ...ALICE, password: "other" })), 503);
  // Errors that are not about reaching upstream pass through unchanged.
  const invalid = new PassthroughGate({
    upstreams: registry(),
    checker: { checkAccess: () => Promise.reject(new RegistryError("NAME_INVALID", "bad")) },
  });
  assert.equal(await status(invalid.check(ALICE, ADDRESS, "private.test", "x", PROBE)), 400);
});

Deno.test("passthrough: a mirror token carries the verdict its endpoint recorded", async () => {
  const signer = new TokenSigner(new Uint8Array(32).fill(7), 300_000);
  const fake = checker(() => Promise.resolve("allowed"));
  const gate = new PassthroughGate({
    upstreams: registry(),
    checker: fake,
    verifyToken: (t) => signer.verify(t),
  });
  const key = passthroughKey("private.test", "team/app");
  const admit = (token: string, repository = "team/app") =>
    gate.admit(request(`Bearer ${token}`), ADDRESS, "private.test", repository, PROBE, {});
  assert.equal(await admit(signer.issue("", { [key]: ["pull"] }).token), "");
  assert.equal(await status(admit(signer.issue("", { [key]: [] }).token)), 403);
  assert.equal(await status(admit(signer.issue("", { [key]: ["pull"] }).token, "team/x")), 401);
  // A grant under the mirror's own key (what its rules give) is no pass-through grant.
  const ruleKey = "mirror:private.test/team/app";
  assert.equal(await status(admit(signer.issue("alice", { [ruleKey]: ["pull"] }).token)), 401);
  assert.equal(await status(admit("forged.token")), 401);
  assert.equal(fake.calls.length, 0, "tokens never cost an upstream check");
});

Deno.test("passthrough: a login is checked with the passthrough upstream, remembered", async () => {
  let now = 0;
  const logs: string[] = [];
  const calls: string[] = [];
  // private.test knows alice (pw) and is down for the password "down".
  const gateFor = (upstreams: UpstreamRegistry) =>
    new PassthroughGate({
      upstreams,
      now: () => now,
      log: (line) => logs.push(line),
      checker: {
        checkAccess(namespace: string, repository: string, probe: AccessProbe, c) {
          calls.push(`${namespace} ${probe.kind} ${repository || "-"} ${c.username}`);
          if (c.password === "down") {
            return Promise.reject(new RegistryError("UNAVAILABLE", "cannot reach private.test"));
          }
          return Promise.resolve(
            c.username === "alice" && c.password === "pw" ? "allowed" : "unauthorized",
          );
        },
      },
    });
  const gate = gateFor(registry());
  const login = (username: string, password = "pw") => gate.login({ username, password }, ADDRESS);
  assert.equal(await login("alice"), true);
  assert.equal(await login("carol"), false);
  // Only the passthrough upstream is asked (public.test never is), with the login probe.
  assert.deepEqual(calls, ["private.test login - alice", "private.test login - carol"]);
  // Remembered: a pass for the TTL, a refusal for 5 s.
  calls.length = 0;
  assert.equal(await login("alice"), true);
  assert.equal(await login("carol"), false);
  assert.deepEqual(calls, []);
  now += NEGATIVE_TTL_MS + 1;
  assert.equal(await login("carol"), false);
  assert.equal(calls.length, 1);
  // Upstream could not be asked: let through, with a warning that names the upstream and
  // nothing of the credentials.
  assert.equal(await login("dave", "down"), true);
  assert.equal(logs.length, 1);
  assert.match(logs[0], /private\.test/);
  assert.ok(!logs[0].includes("dave") && !logs[0].includes("down"), logs[0]);
  // A login check never stands in for a repository's: alice's pull is asked for.
  calls.length = 0;
  assert.equal(await gate.check(ALICE_PW, ADDRESS, "private.test", "team/app", PROBE), "allowed");
  assert.deepEqual(calls, ["private.test manifest team/app alice"]);
  // Two passthrough upstreams: a login names neither, so neither is sent the credentials.
  const two = gateFor(
    new UpstreamRegistry([
      { ...defaultUpstream("private.test"), configured: true, auth: "passthrough" },
      { ...defaultUpstream("quay.test"), configured: true, auth: "passthrough" },
    ]),
  );
  calls.length = 0;
  assert.equal(await two.login({ username: "carol", password: "pw" }, ADDRESS), true);
  assert.deepEqual(calls, []);
});

const ALICE_PW = { username: "alice", password: "pw" };

Deno.test("passthrough: refused credentials lock out that address and user, no one else", async () => {
  let now = 0;
  const fake = checker((c) =>
    Promise.resolve(c.password === ALICE.password ? "allowed" : "unauthorized")
  );
  const results: string[] = [];
  const gate = new PassthroughGate({
    upstreams: registry(),
    checker: fake,
    now: () => now,
    onCheck: (_ns, result) => results.push(result),
  });
  const check = (password: string, address = ADDRESS, username = "alice") =>
    status(gate.check({ username, password }, address, "private.test", "team/app", PROBE));
  // alice's pass, remembered before the guessing starts.
  assert.equal(await check(ALICE.password), "allowed");
  const guesses = [];
  for (let i = 0; i < 8; i++) guesses.push(await check(`guess-${i}`));
  assert.deepEqual(guesses, [
    "unauthorized",
    "unauthorized",
    "unauthorized",
    "unauthorized",
    "unauthorized",
    429,
    429,
    429,
  ]);
  // Five asked upstream (and the first pass), the locked ones not.
  assert.equal(fake.calls.length, 6);
  assert.equal(results.filter((r) => r === "locked").length, 3);
  const locked = await gate.check(
    { username: "alice", password: "x" },
    ADDRESS,
    "private.test",
    "team/app",
    PROBE,
  )
    .catch((e) => e as RegistryError);
  assert.ok(locked instanceof RegistryError && locked.code === "TOOMANYREQUESTS");
  assert.equal(locked.headers["retry-after"], "1");
  // The pass already remembered still admits; other users at the address, and alice
  // elsewhere, are asked as usual; a login from the locked pair is locked too.
  assert.equal(await check(ALICE.password), "allowed");
  assert.equal(await check("bob-pw", ADDRESS, "bob"), "unauthorized");
  assert.equal(await check("guess-x", "10.0.0.2"), "unauthorized");
  assert.equal(await status(gate.login({ username: "alice", password: "y" }, ADDRESS)), 429);
  // The lock ends (1 s after the fifth refusal), and a pass clears the count.
  now += 1_001;
  assert.equal(await check("guess-9"), "unauthorized");
  assert.equal(await check("guess-10"), 429);
  now += 2_001;
  now += 60_001; // alice's pass has expired: asked again, and it clears the count
  assert.equal(await check(ALICE.password), "allowed");
  assert.equal(await check("guess-11"), "unauthorized");
  assert.equal(await check("guess-12"), "unauthorized");
});
