import { assertEquals } from "../../tests/support/assert.ts";
import { LoginLimiter } from "./login_limiter.ts";

Deno.test("login backoff: five free failures, then doubling locks; success clears the user", () => {
  const clock = { now: 0 };
  const limiter = new LoginLimiter(() => clock.now);
  const keys = ["user:alice", "address:10.0.0.1"];
  for (let i = 0; i < 4; i++) limiter.failed(keys);
  assertEquals(limiter.retryAfter(keys), 0);
  limiter.failed(keys);
  assertEquals(limiter.retryAfter(keys), 1);
  clock.now += 1000;
  assertEquals(limiter.retryAfter(keys), 0);
  limiter.failed(keys);
  assertEquals(limiter.retryAfter(keys), 2);
  assertEquals(limiter.retryAfter(["user:alice"]), 2, "the user is locked from anywhere");
  assertEquals(
    limiter.retryAfter(["address:10.0.0.1", "user:bob"]),
    2,
    "and the address for anyone",
  );
  clock.now += 2000;
  limiter.succeeded(["user:alice"]);
  assertEquals(limiter.retryAfter(["user:alice"]), 0);
  for (let i = 0; i < 30; i++) limiter.failed(["user:carol"]);
  assertEquals(limiter.retryAfter(["user:carol"]), 300, "capped at five minutes");
});

Deno.test("login backoff: at most two password checks at once per key", () => {
  const limiter = new LoginLimiter(() => 0);
  const keys = ["address:10.0.0.2"];
  limiter.started(keys);
  limiter.started(keys);
  assertEquals(limiter.retryAfter(keys), 1);
  limiter.finished(keys);
  assertEquals(limiter.retryAfter(keys), 0);
});
