import { assert } from "../../tests/support/assert.ts";
import { tuneAllocator } from "./memory.ts";

Deno.test("glibc's allocator accepts the tuning when FFI is allowed", () => {
  if (Deno.build.os !== "linux") return;
  assert(tuneAllocator(), "mallopt through libc.so.6 should succeed with -A on glibc");
});
