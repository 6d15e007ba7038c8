import { assert, assertEquals } from "../../tests/support/assert.ts";
import { defaultUpstream } from "../config/upstreams.ts";
import { errorSummary, type FailedRequest, responseError, throttled } from "./errors.ts";
import { transientHint } from "./retry.ts";

const upstream = { ...defaultUpstream("quay.io"), username: "robot", password: "s3cret" };
const request: FailedRequest = {
  upstream,
  repository: "org/app",
  notFound: "MANIFEST_UNKNOWN",
  what: "manifest org/app:1",
};
const registry = new URL("https://quay.io/v2/org/app/manifests/1");
const storage = new URL("https://cdn.example/blob?sig=abc");

function answer(status: number, headers: Record<string, string> = {}, message?: string) {
  const body = message === undefined ? null : JSON.stringify({ errors: [{ message }] });
  return new Response(body, { status, headers });
}

Deno.test("errors: statuses map to OCI codes; a redirect target's 401/403 is not the registry's", async () => {
  const cases: [Response, URL, boolean, string][] = [
    [answer(404), registry, false, "MANIFEST_UNKNOWN"],
    [answer(404), storage, false, "MANIFEST_UNKNOWN"],
    [answer(429), registry, false, "TOOMANYREQUESTS"],
    [answer(416), registry, false, "RANGE_INVALID"],
    [answer(401), registry, true, "UPSTREAM_ERROR"],
    [answer(401), registry, false, "UPSTREAM_ERROR"],
    [answer(403), registry, true, "DENIED"],
    [answer(403), storage, false, "UPSTREAM_ERROR"],
    [answer(401), storage, false, "UPSTREAM_ERROR"],
    [answer(500), registry, false, "UPSTREAM_ERROR"],
  ];
  for (const [response, url, authorized, code] of cases) {
    const error = await responseError(response, request, url, authorized);
    assertEquals(error.code, code, `${response.status} from ${url.host}: ${error.message}`);
  }
  const rejected = await responseError(answer(401), request, registry, true);
  assert(rejected.message.includes("rejected the mirror's credentials"), rejected.message);
});

Deno.test("errors: Retry-After and Content-Range pass on; retryable statuses are transient", async () => {
  const limited = await responseError(
    answer(429, { "retry-after": "7" }),
    request,
    registry,
    false,
  );
  assertEquals(limited.headers, { "Retry-After": "7" });
  assertEquals(transientHint(limited), { retryAfterMs: 7_000 });
  const range = await responseError(
    answer(416, { "content-range": "bytes */10" }),
    request,
    registry,
    false,
  );
  assertEquals(range.headers, { "Content-Range": "bytes */10" });
  assertEquals(transientHint(range), undefined);
  const gateway = await responseError(answer(502), request, registry, false);
  assertEquals(transientHint(gateway), { retryAfterMs: undefined });
  const waited = throttled(upstream, 1_200);
  assertEquals([waited.code, waited.headers], ["TOOMANYREQUESTS", { "Retry-After": "2" }]);
});

Deno.test("errors: summaries show the first OCI message, scrubbed of secrets and control characters", async () => {
  const error = await responseError(
    answer(500, {}, "bad password s3cret\r\ninjected"),
    request,
    registry,
    false,
  );
  assert(!error.message.includes("s3cret"), error.message);
  assert(error.message.endsWith(": bad password *** injected"), error.message);
  assertEquals(await errorSummary(new Response("not json"), []), "");
  assertEquals(
    await errorSummary(new Response(JSON.stringify({ errors: [{ code: "DENIED" }] })), []),
    ": DENIED",
  );
  const huge = JSON.stringify({ errors: [{ message: "x".repeat(1000) }] });
  assertEquals((await errorSummary(new Response(huge), [])).length, 2 + 200);
});
