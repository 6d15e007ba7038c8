import { assertEquals, assertThrows } from "../../tests/support/assert.ts";
import { ConfigError } from "./upstreams.ts";
import { filesystemBytes, parseSizeBound } from "./size.ts";

Deno.test("sizes: bytes, decimal and binary units, percentages; mistakes name the flag", () => {
  assertEquals(parseSizeBound("1073741824", "--x"), { bytes: 1073741824 });
  assertEquals(parseSizeBound("50GiB", "--x"), { bytes: 50 * 2 ** 30 });
  assertEquals(parseSizeBound("1.5 MB", "--x"), { bytes: 1_500_000 });
  assertEquals(parseSizeBound("80%", "--x"), { percent: 80 });
  for (const bad of ["", "GiB", "-1", "0", "12 parsecs", "0%", "101%"]) {
    assertThrows(() => parseSizeBound(bad, "--x"), ConfigError, "--x");
  }
});

Deno.test("the filesystem's size comes from df", async () => {
  const size = await filesystemBytes(Deno.cwd());
  assertEquals(Number.isSafeInteger(size) && size > 0, true);
});
