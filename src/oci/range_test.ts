import { assertEquals, assertThrows } from "../../tests/support/assert.ts";
import { RegistryError } from "./errors.ts";
import { parseRange } from "./range.ts";

Deno.test("single byte ranges", () => {
  assertEquals(parseRange("bytes=0-0", 10), { start: 0, end: 0 });
  assertEquals(parseRange("bytes=2-5", 10), { start: 2, end: 5 });
  assertEquals(parseRange("bytes=2-", 10), { start: 2, end: 9 });
  assertEquals(parseRange("bytes=-3", 10), { start: 7, end: 9 });
  assertEquals(parseRange("bytes=5-100", 10), { start: 5, end: 9 });
  assertEquals(parseRange("bytes=-100", 10), { start: 0, end: 9 });
});

Deno.test("no, malformed or multi-range headers mean the whole body", () => {
  assertEquals(parseRange(null, 10), undefined);
  assertEquals(parseRange("bytes=0-1,3-4", 10), undefined);
  assertEquals(parseRange("items=0-1", 10), undefined);
  assertEquals(parseRange("bytes=5-2", 10), undefined);
  assertEquals(parseRange("bytes=0-1", undefined), undefined);
});

Deno.test("unsatisfiable ranges are 416 with Content-Range */size", () => {
  for (const header of ["bytes=10-", "bytes=10-20", "bytes=-0"]) {
    const error = assertThrows(() => parseRange(header, 10), RegistryError);
    assertEquals(error.status, 416);
    assertEquals(error.headers["content-range"], "bytes */10");
  }
});
