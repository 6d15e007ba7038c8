import { assertEquals, assertMatch } from "../../tests/support/assert.ts";
import { RegistryError } from "../oci/errors.ts";
import { readLimited } from "./upstream_port.ts";

/** A body of `chunks` without a Content-Length (as a chunked upstream answer). */
function streamed(chunks: Uint8Array[]): Response {
  return new Response(ReadableStream.from(chunks));
}

async function refusal(promise: Promise<unknown>): Promise<RegistryError> {
  try {
    await promise;
  } catch (e) {
    return e as RegistryError;
  }
  throw new Error("expected a refusal");
}

Deno.test("readLimited: whole bodies up to the limit; larger ones refused, named", async () => {
  const bytes = new Uint8Array([1, 2, 3, 4]);
  assertEquals(await readLimited(new Response(bytes), 4, "manifest 1"), bytes);
  assertEquals(await readLimited(streamed([bytes.slice(0, 2), bytes.slice(2)]), 4, "x"), bytes);
  // Refused on the announced length, before anything is read.
  const announced = await refusal(readLimited(new Response(new Uint8Array(5)), 4, "tags of a/b"));
  assertEquals(announced.code, "UPSTREAM_ERROR");
  assertMatch(announced.message, /^upstream tags of a\/b is larger than 4 bytes$/);
  // Refused when a body without a length grows past it.
  const grown = await refusal(
    readLimited(streamed([bytes, new Uint8Array(1)]), 4, `referrers of sha256:${"a".repeat(64)}`),
  );
  assertMatch(grown.message, /^upstream referrers of sha256:a+ is larger than 4 bytes$/);
});
