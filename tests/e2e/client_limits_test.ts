/**
 * Per-client limits in a real mirror process: --client-rate answers a burst over the rate with
 * 429 and Retry-After, per client: the user a request authenticated as, else its address.
 * (--client-downloads is proven through the handler in src/http/client_limits_test.ts.)
 */
import { assert, assertEquals, assertMatch } from "../support/assert.ts";
import { startMirror } from "../support/mirror.ts";
import { delay, run, tempDir } from "../support/tools.ts";

Deno.test("--client-rate: a burst gets 429 + Retry-After, per user, then it refills", async () => {
  await using dir = await tempDir("limits-e2e-");
  const lines = [];
  for (const [user, password] of [["alice", "a-pw"], ["bob", "b-pw"]]) {
    lines.push((await run("htpasswd", ["-Bbn", user, password], { check: true })).stdout.trim());
  }
  await Deno.writeTextFile(dir.join("htpasswd"), lines.join("\n") + "\n");
  await Deno.writeTextFile(
    dir.join("auth.yaml"),
    "htpasswd: htpasswd\nrules:\n  - namespace: myorg\n    users: [alice, bob]\n    actions: [pull]\n",
  );
  await using mirror = await startMirror({
    extraArgs: ["--hosted", "myorg", "--auth-config", dir.join("auth.yaml"), "--client-rate", "5"],
  });
  const get = async (user: string, password: string) => {
    const r = await mirror.fetch("/v2/myorg/app/tags/list", {
      headers: { authorization: `Basic ${btoa(`${user}:${password}`)}` },
    });
    await r.body?.cancel();
    return { status: r.status, retryAfter: r.headers.get("retry-after") };
  };
  await get("alice", "a-pw"); // one bcrypt check, cached from here on
  const burst = await Promise.all(Array.from({ length: 20 }, () => get("alice", "a-pw")));
  const limited = burst.filter((r) => r.status === 429);
  assert(limited.length >= 10, `only ${limited.length} of 20 limited`);
  assert(burst.some((r) => r.status === 404), "some got through (no such repository: 404)");
  assert(limited.every((r) => r.retryAfter === "1"));
  // bob, from the same address, has a budget of his own.
  assertEquals((await get("bob", "b-pw")).status, 404);
  await delay(1100);
  assertEquals((await get("alice", "a-pw")).status, 404, "refilled after a second");
  const metrics = await (await mirror.fetch("/metrics")).text();
  assertMatch(metrics, /oci_registry_client_rate_limited_total [1-9]\d*/);
});
