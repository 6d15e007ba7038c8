import { assert, assertEquals } from "../../tests/support/assert.ts";
import { defaultUpstream } from "../config/upstreams.ts";
import {
  parseQuota,
  parseRetryAfter,
  rateLimitKey,
  rateLimitKeyOwner,
  RateLimits,
} from "./rate_limits.ts";

const headers = (init: Record<string, string>) => new Headers(init);

Deno.test("rate limits: Docker Hub's headers counted down, per upstream and credential", () => {
  const clock = { now: 1_000_000 };
  const limits = new RateLimits(() => clock.now);
  const hub = "docker.io anonymous";
  limits.observe(
    hub,
    200,
    headers({ "ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600" }),
  );
  assertEquals(limits.get(hub), {
    limit: 100,
    windowSeconds: 21600,
    remaining: 76,
    observedAt: 1_000_000,
    blockedUntil: undefined,
  });
  assert(!limits.isLow(hub, 10));
  limits.observe(hub, 200, headers({ "ratelimit-remaining": "9;w=21600" }));
  assert(limits.isLow(hub, 10), "9 left is below a reserve of 10");
  assert(!limits.isLow("docker.io user:alice", 10), "another credential has its own count");
  clock.now += 21_600_001;
  assert(!limits.isLow(hub, 10), "a count older than its window is not believed");
  limits.observe("quay.io anonymous", 200, headers({}));
  assertEquals(limits.get("quay.io anonymous"), undefined, "nothing said, nothing kept");
});

Deno.test("rate limits: a 429 blocks for its Retry-After; the next success clears it", () => {
  const clock = { now: 5_000 };
  const limits = new RateLimits(() => clock.now);
  limits.observe("k", 429, headers({ "retry-after": "30", "ratelimit-remaining": "0" }));
  assertEquals(limits.waitMs("k"), 30_000);
  assert(limits.isLow("k", 0));
  clock.now += 10_000;
  assertEquals(limits.waitMs("k"), 20_000);
  limits.observe("k", 429, headers({}));
  assertEquals(limits.waitMs("k"), 10_000, "a 429 without Retry-After still backs off");
  clock.now += 10_000;
  assertEquals(limits.waitMs("k"), 0);
  limits.observe("k", 503, headers({ "retry-after": "5" }));
  assertEquals(limits.waitMs("k"), 5_000);
  limits.observe("k", 200, headers({ "ratelimit-remaining": "50" }));
  assertEquals(limits.waitMs("k"), 0);
});

Deno.test("rate limits: header forms and garbage", () => {
  assertEquals(parseQuota("100;w=21600"), { count: 100, windowSeconds: 21600 });
  assertEquals(parseQuota("100"), { count: 100, windowSeconds: undefined });
  assertEquals(parseQuota(" 7 ; w = 60, 100;w=3600"), { count: 7, windowSeconds: 60 });
  assertEquals(parseQuota("lots"), undefined);
  assertEquals(parseQuota(null), undefined);
  const now = Date.parse("2026-12-01T12:00:00Z");
  assertEquals(parseRetryAfter("120", now), 120_000);
  assertEquals(parseRetryAfter("Tue, 01 Dec 2026 12:01:00 GMT", now), 60_000);
  assertEquals(parseRetryAfter("Tue, 01 Dec 2026 11:00:00 GMT", now), 0);
  assertEquals(parseRetryAfter("99999999", now), 6 * 3_600_000, "capped");
  assertEquals(parseRetryAfter("soon", now), undefined);
});

Deno.test("rate limits: keyed per upstream and credential; metrics see no user name", () => {
  const hub = defaultUpstream("docker.io");
  const anonymous = rateLimitKey(hub);
  const alice = rateLimitKey({ ...hub, username: "alice", password: "secret" });
  assert(anonymous !== alice, "each credential has its own count");
  assertEquals(rateLimitKeyOwner(anonymous), { namespace: "docker.io", credential: "anonymous" });
  assertEquals(rateLimitKeyOwner(alice), { namespace: "docker.io", credential: "configured" });
  assert(!alice.includes("secret"), "no password in a key");
});
