import { assert, assertEquals, assertRejects } from "../../tests/support/assert.ts";
import { createBlockHasher, hashesInBackground } from "./background_hash.ts";
import { type DigestAlgorithm, digestOf } from "../oci/digest.ts";

function randomBytes(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
  return bytes;
}

Deno.test("libcrypto is found and used on Linux when FFI is allowed", () => {
  if (Deno.build.os !== "linux") return;
  assert(hashesInBackground(), "libcrypto.so.3 (Debian libssl3) should load with -A");
});

for (const inPlace of [false, true]) {
  for (const algorithm of ["sha256", "sha512"] as DigestAlgorithm[]) {
    Deno.test(`${inPlace ? "in-place" : "background"} ${algorithm} of blocks equals node:crypto over the whole`, async () => {
      const bytes = randomBytes(3 * 1024 * 1024 + 12345);
      const hasher = createBlockHasher(algorithm, { inPlace });
      const done: Promise<void>[] = [];
      // Uneven blocks, an empty one among them.
      for (const [start, end] of [[0, 1], [1, 1], [1, 1 << 20], [1 << 20, bytes.byteLength]]) {
        done.push(hasher.update(bytes.subarray(start, end)));
      }
      await Promise.all(done);
      assertEquals(await hasher.digest(), digestOf(bytes, algorithm));
    });
  }
}

Deno.test("the digest of nothing, and a disposed hasher", async () => {
  assertEquals(await createBlockHasher("sha256").digest(), digestOf(new Uint8Array(0)));
  const hasher = createBlockHasher("sha256");
  const pending = hasher.update(randomBytes(1 << 20));
  hasher.dispose();
  hasher.dispose(); // twice is fine
  await pending; // never rejects
  await assertRejects(() => hasher.digest());
});
