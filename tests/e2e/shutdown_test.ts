/**
 * SIGTERM as Kubernetes sends it: the mirror stops accepting, lets the responses and downloads
 * in flight finish within --shutdown-grace, then exits 0; past the grace period it closes what
 * is left instead of hanging until SIGKILL.
 */
import { assert, assertEquals } from "../support/assert.ts";
import { startMirror } from "../support/mirror.ts";
import { slowUpstream } from "../support/slow_upstream.ts";

const blobPath = (digest: string) => `/v2/slow.test/library/x/blobs/${digest}`;

Deno.test("shutdown: a response in flight finishes within the grace period, then exit 0", async () => {
  await using upstream = slowUpstream(2000);
  await using mirror = await startMirror({
    upstreams: [{ namespace: "slow.test", host: upstream.host, tls: false }],
    extraArgs: ["--shutdown-grace", "20s"],
  });
  const response = await mirror.fetch(blobPath(upstream.digest));
  assertEquals(response.status, 200);
  const body = response.arrayBuffer();
  await new Promise((resolve) => setTimeout(resolve, 300));
  const stopped = performance.now();
  const exiting = mirror.stop(30_000);
  await mirror.waitForLog(/SIGTERM: shutting down/);
  // No new connections once the signal arrived.
  const refused = await fetch(mirror.url + "/v2/").then(() => false, () => true);
  assert(refused, "a new connection after SIGTERM is refused");
  assertEquals(new Uint8Array(await body), upstream.blob, "the response in flight arrived whole");
  const status = await exiting;
  assertEquals(status?.code, 0);
  assert(performance.now() - stopped < 10_000, "it exited once the work was done");
  assertEquals(upstream.blobGets(), 1);
});

Deno.test("shutdown: past --shutdown-grace what is left is closed and the process exits 0", async () => {
  await using upstream = slowUpstream(8000);
  await using mirror = await startMirror({
    upstreams: [{ namespace: "slow.test", host: upstream.host, tls: false }],
    extraArgs: ["--shutdown-grace", "1s"],
  });
  const response = await mirror.fetch(blobPath(upstream.digest));
  const body = response.arrayBuffer().then(() => "whole", () => "cut");
  await new Promise((resolve) => setTimeout(resolve, 300));
  const stopped = performance.now();
  const status = await mirror.stop(30_000);
  const took = performance.now() - stopped;
  assertEquals(status?.code, 0, mirror.logs());
  assert(took >= 900 && took < 4000, `exited ${took.toFixed(0)} ms after SIGTERM`);
  assertEquals(await body, "cut", "an 8 s response cannot finish in a 1 s grace period");
  assert(/stopping now: closing 1 connection\(s\)/.test(mirror.logs()), mirror.logs());
});
