import { assertEquals } from "../../tests/support/assert.ts";
import { DEFAULT_RETRY_POLICY, isRetryableStatus, retryDelayMs } from "./retry.ts";

Deno.test("retry: exponential backoff with full jitter, capped, within the budget", () => {
  const policy = { retries: 4, budgetMs: 10_000, baseDelayMs: 200, maxDelayMs: 1_000 };
  const top = () => 0.999999;
  assertEquals(retryDelayMs(policy, 1, 0, undefined, top), 199);
  assertEquals(retryDelayMs(policy, 2, 0, undefined, top), 399);
  assertEquals(retryDelayMs(policy, 3, 0, undefined, top), 799);
  assertEquals(retryDelayMs(policy, 4, 0, undefined, top), 999, "capped at maxDelayMs");
  assertEquals(retryDelayMs(policy, 5, 0, undefined, top), undefined, "no retries left");
  assertEquals(retryDelayMs(policy, 1, 0, undefined, () => 0), 0);
  assertEquals(retryDelayMs(policy, 2, 9_700, undefined, top), undefined, "past the budget");
});

Deno.test("retry: Retry-After is honoured when it fits the budget, else the request gives up", () => {
  const policy = DEFAULT_RETRY_POLICY;
  assertEquals(retryDelayMs(policy, 1, 0, 2_000), 2_000);
  assertEquals(retryDelayMs(policy, 1, 0, 60_000), undefined);
});

Deno.test("retry: which statuses a second try can cure", () => {
  for (const status of [408, 429, 500, 502, 503, 504]) {
    assertEquals(isRetryableStatus(status), true);
  }
  for (const status of [400, 401, 403, 404, 405, 416, 501]) {
    assertEquals(isRetryableStatus(status), false);
  }
});
