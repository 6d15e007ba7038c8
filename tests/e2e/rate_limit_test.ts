/**
 * Upstream rate limits as Docker Hub states them, against a real mirror process: a scripted
 * upstream (edge case: a registry counting down its quota is the point) sends
 * `ratelimit-remaining` on every answer, counting down per manifest GET, then 429 with
 * Retry-After. The mirror must stop revalidating at its reserve, keep serving what it has, and
 * answer what it lacks with 429 and a correct Retry-After instead of hammering upstream.
 */
import { digestOf } from "../../src/oci/digest.ts";
import { OCI_MANIFEST } from "../../src/oci/media_types.ts";
import { assert, assertEquals } from "../support/assert.ts";
import { startMirror } from "../support/mirror.ts";
import { freePort } from "../support/tools.ts";

const encoder = new TextEncoder();

function quotaUpstream(quota: number) {
  const config = encoder.encode("{}");
  const configDigest = digestOf(config);
  const manifest = encoder.encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: {
      mediaType: "application/vnd.oci.image.config.v1+json",
      digest: configDigest,
      size: 2,
    },
    layers: [],
  }));
  const digest = digestOf(manifest);
  const calls: string[] = [];
  let remaining = quota;
  let blocked = false;
  const port = freePort();
  const server = Deno.serve({ hostname: "127.0.0.1", port, onListen() {} }, (request) => {
    const path = new URL(request.url).pathname;
    if (path === "/v2/" || path === "/v2") return new Response("{}");
    calls.push(`${request.method} ${path}`);
    const limit = { "ratelimit-limit": "100;w=21600" };
    if (blocked) {
      return new Response("rate limited", {
        status: 429,
        headers: { ...limit, "ratelimit-remaining": "0;w=21600", "retry-after": "120" },
      });
    }
    if (path.includes("/manifests/")) {
      if (request.method === "GET") remaining--; // HEADs are free, as on Docker Hub
      return new Response(request.method === "HEAD" ? null : manifest, {
        headers: {
          ...limit,
          "ratelimit-remaining": `${remaining};w=21600`,
          "content-type": OCI_MANIFEST,
          "docker-content-digest": digest,
          "content-length": String(manifest.byteLength),
        },
      });
    }
    return new Response(request.method === "HEAD" ? null : config, {
      headers: { "content-length": "2", "docker-content-digest": configDigest },
    });
  });
  return {
    host: `127.0.0.1:${port}`,
    digest,
    calls,
    block: () => blocked = true,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

Deno.test("rate limits: revalidation stops at the reserve; a 429 upstream becomes the mirror's own 429 with Retry-After", async () => {
  await using upstream = quotaUpstream(6);
  await using mirror = await startMirror({
    upstreams: [{
      namespace: "ratelimited.test",
      host: upstream.host,
      tls: false,
      manifest_invalidation_time: "0s", // every cached tag is due for revalidation
      rate_limit_reserve: 3,
    }],
  });
  const get = async (tag: string) => {
    const response = await mirror.fetch(`/v2/ratelimited.test/library/app/manifests/${tag}`, {
      headers: { accept: OCI_MANIFEST },
    });
    return {
      status: response.status,
      retryAfter: response.headers.get("retry-after"),
      body: await response.text(),
    };
  };
  const heads = () => upstream.calls.filter((c) => c.startsWith("HEAD")).length;

  assertEquals((await get("1")).status, 200); // GET: 5 left
  assertEquals((await get("1")).status, 200); // revalidated with a HEAD: 5 > 3
  assertEquals(heads(), 1);
  assertEquals((await get("2")).status, 200); // GET: 4 left
  assertEquals((await get("3")).status, 200); // GET: 3 left, at the reserve
  assertEquals((await get("1")).status, 200);
  assertEquals(heads(), 1, "at the reserve, cached tags are served without revalidating");
  const metrics = await (await mirror.fetch("/metrics")).text();
  assert(
    metrics.includes(
      'oci_registry_upstream_ratelimit_remaining{namespace="ratelimited.test",credential="anonymous"} 3',
    ),
    metrics.split("\n").filter((l) => l.includes("ratelimit")).join("\n"),
  );

  upstream.block();
  const refused = await get("4");
  assertEquals(refused.status, 429);
  assertEquals(refused.retryAfter, "120");
  assertEquals(JSON.parse(refused.body).errors[0].code, "TOOMANYREQUESTS");
  const asked = upstream.calls.length;
  const again = await get("5");
  assertEquals(again.status, 429);
  assert(Number(again.retryAfter) >= 118 && Number(again.retryAfter) <= 120, again.retryAfter!);
  assertEquals(upstream.calls.length, asked, "while upstream blocks, it is not asked again");
  for (const tag of ["1", "2", "3"]) assertEquals((await get(tag)).status, 200, `cached ${tag}`);
  assertEquals(upstream.calls.length, asked);
});
