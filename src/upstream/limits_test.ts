import { assert, assertEquals, assertRejects } from "../../tests/support/assert.ts";
import { RegistryError } from "../oci/errors.ts";
import { Limiter } from "./limits.ts";

Deno.test("limits: at most N in progress; the next waits its turn, in order", async () => {
  const limiter = new Limiter("registry.test", { maxConcurrent: 2, queueTimeoutMs: 5_000 });
  const first = await limiter.acquire();
  const second = await limiter.acquire();
  const order: number[] = [];
  const third = limiter.acquire().then((release) => (order.push(3), release));
  const fourth = limiter.acquire().then((release) => (order.push(4), release));
  assertEquals([limiter.inProgress, limiter.waiting], [2, 2]);
  first();
  first(); // a second release is a no-op
  (await third)();
  second();
  (await fourth)();
  assertEquals(order, [3, 4]);
  assertEquals([limiter.inProgress, limiter.waiting], [0, 0]);
});

Deno.test("limits: a wait longer than queue_timeout ends in 503 with Retry-After", async () => {
  const limiter = new Limiter("registry.test", { maxConcurrent: 1, queueTimeoutMs: 50 });
  const held = await limiter.acquire();
  const error = await assertRejects(() => limiter.acquire(), RegistryError);
  assertEquals([error.code, error.status, error.headers["Retry-After"]], ["UNAVAILABLE", 503, "1"]);
  assert(/as busy as configured \(1 requests in progress/.test(error.message), error.message);
  assertEquals(limiter.waiting, 0);
  held();
  (await limiter.acquire())();
});

Deno.test("limits: requests per second are paced, a second's worth of burst at most", async () => {
  const limiter = new Limiter("registry.test", { perSecond: 20, queueTimeoutMs: 5_000 });
  const started = performance.now();
  const releases = await Promise.all(Array.from({ length: 30 }, () => limiter.acquire()));
  const took = performance.now() - started;
  for (const release of releases) release();
  // 20 at once, the other 10 at 20/s: about half a second.
  assert(took >= 450 && took < 2_000, `30 requests at 20/s took ${took.toFixed(0)} ms`);
});

Deno.test("limits: an aborted wait leaves the queue", async () => {
  const limiter = new Limiter("registry.test", { maxConcurrent: 1, queueTimeoutMs: 5_000 });
  const held = await limiter.acquire();
  const abort = new AbortController();
  const waiting = limiter.acquire(abort.signal);
  abort.abort(new Error("client went away"));
  await assertRejects(() => waiting);
  assertEquals(limiter.waiting, 0);
  held();
});
