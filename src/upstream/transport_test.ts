import { assert, assertEquals, assertRejects } from "../../tests/support/assert.ts";
import { defaultUpstream } from "../config/upstreams.ts";
import { RegistryError } from "../oci/errors.ts";
import { describeHost, readText, upstreamHost, withIdleTimeout } from "./transport.ts";

function streamOf(...chunks: string[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return ReadableStream.from(chunks.map((c) => encoder.encode(c)));
}

Deno.test("transport: bounded reads throw past the limit, or truncate when asked", async () => {
  assertEquals(await readText(streamOf("ab", "cd"), 4), "abcd");
  const error = await assertRejects(
    () => readText(streamOf("ab", "cde"), 4),
    RegistryError,
    "larger than 4 bytes",
  );
  assertEquals(error.code, "UPSTREAM_ERROR");
  assertEquals(await readText(streamOf("ab", "cde", "fgh"), 4, true), "abcd");
});

Deno.test("transport: hosts are named as URLs spell them; other hosts say whose they are", () => {
  const upstream = { ...defaultUpstream("quay.io"), host: "Quay.IO:443" };
  assertEquals(upstreamHost(upstream), "quay.io");
  assertEquals(describeHost(new URL("https://quay.io/v2/"), upstream), "upstream quay.io");
  assertEquals(
    describeHost(new URL("https://cdn.example/blob"), upstream),
    "cdn.example (for upstream Quay.IO:443)",
  );
});

Deno.test("transport: a body that stalls errors UNAVAILABLE and reports its end once", async () => {
  let ends = 0;
  const silent = new ReadableStream<Uint8Array>({ pull: () => new Promise(() => {}) });
  const guarded = withIdleTimeout(silent, 20, "upstream test", undefined, () => ends++);
  const error = await assertRejects(() => new Response(guarded).text(), RegistryError, "stalled");
  assertEquals(error.code, "UNAVAILABLE");
  assertEquals(ends, 1);
});

Deno.test("transport: a guarded body passes bytes through unchanged", async () => {
  let ended = false;
  const guarded = withIdleTimeout(
    streamOf("hello ", "world"),
    1_000,
    "upstream test",
    undefined,
    () => {
      ended = true;
    },
  );
  assertEquals(await new Response(guarded).text(), "hello world");
  assert(ended);
});
