/**
 * Per-upstream bounds against a real mirror process and a scripted slow upstream (edge case:
 * the slowness is the point): with `max_concurrent_requests: 1` a second download waits for the
 * first, and past `queue_timeout` the client gets 503 with Retry-After while upstream never
 * sees more than one request at a time.
 */
import { assert, assertEquals } from "../support/assert.ts";
import { startMirror } from "../support/mirror.ts";
import { slowUpstream } from "../support/slow_upstream.ts";

Deno.test("upstream limits: one request at a time; a wait past queue_timeout is a 503 with Retry-After", async () => {
  await using upstream = slowUpstream(2000, 64 * 1024, 3);
  await using mirror = await startMirror({
    upstreams: [{
      namespace: "slow.test",
      host: upstream.host,
      tls: false,
      max_concurrent_requests: 1,
      queue_timeout: "500ms",
    }],
  });
  const path = (i: number) => `/v2/slow.test/library/x/blobs/${upstream.digests[i]}`;
  const first = mirror.fetch(path(0));
  await new Promise((resolve) => setTimeout(resolve, 200));
  const started = performance.now();
  const second = await mirror.fetch(path(1));
  const waited = performance.now() - started;
  assertEquals(second.status, 503);
  assertEquals(second.headers.get("retry-after"), "1");
  assertEquals(JSON.parse(await second.text()).errors[0].code, "UNAVAILABLE");
  assert(waited >= 450 && waited < 1500, `refused after ${waited.toFixed(0)} ms of waiting`);
  const firstResponse = await first;
  assertEquals(new Uint8Array(await firstResponse.arrayBuffer()), upstream.blobs[0]);
  // Its slot is free once its body was read: the next one goes through.
  const third = await mirror.fetch(path(2));
  assertEquals(new Uint8Array(await third.arrayBuffer()), upstream.blobs[2]);
  assertEquals(upstream.mostAtOnce(), 1, "upstream never had two requests at once");
  assertEquals(upstream.blobGets(), 2, "the refused request never reached upstream");
});

Deno.test("upstream limits: 50 clients on 50 cold blobs never make more than 4 upstream requests at once", async () => {
  await using upstream = slowUpstream(200, 16 * 1024, 50);
  await using mirror = await startMirror({
    upstreams: [{
      namespace: "slow.test",
      host: upstream.host,
      tls: false,
      max_concurrent_requests: 4,
      queue_timeout: "30s",
    }],
  });
  const responses = await Promise.all(
    upstream.digests.map(async (digest, i) => {
      const response = await mirror.fetch(`/v2/slow.test/library/x/blobs/${digest}`);
      return { status: response.status, bytes: new Uint8Array(await response.arrayBuffer()), i };
    }),
  );
  for (const { status, bytes, i } of responses) {
    assertEquals(status, 200);
    assertEquals(bytes, upstream.blobs[i]);
  }
  assertEquals(upstream.blobGets(), 50);
  assertEquals(upstream.mostAtOnce(), 4, "as many at once as allowed, never more");
});
