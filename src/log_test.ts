import { assert, assertEquals } from "../tests/support/assert.ts";
import { createLog } from "./log.ts";

const decoder = new TextDecoder();

Deno.test("lines are batched into few writes, in order, each ending in a newline", async () => {
  const writes: string[] = [];
  const log = createLog((bytes) => {
    writes.push(decoder.decode(bytes));
    return Promise.resolve(bytes.byteLength);
  });
  for (let i = 0; i < 100; i++) log(`line ${i}`);
  await log.flush();
  const text = writes.join("");
  assertEquals(text.split("\n").length, 101);
  assert(text.startsWith("line 0\nline 1\n"));
  assert(writes.length < 5, `${writes.length} writes`);
});

Deno.test("a stalled reader costs dropped lines, counted and reported, never unbounded memory", async () => {
  let release!: () => void;
  const gate = new Promise<void>((resolve) => release = resolve);
  const writes: string[] = [];
  const log = createLog(async (bytes) => {
    await gate;
    writes.push(decoder.decode(bytes));
    return bytes.byteLength;
  });
  log("first");
  await Promise.resolve();
  const line = "x".repeat(1000);
  for (let i = 0; i < 3000; i++) log(line); // ~3 MB while the reader is stuck
  release();
  await log.flush();
  const text = writes.join("");
  assert(text.length < 2 << 20, `${text.length} bytes buffered`);
  assert(/log: \d+ lines dropped/.test(text), "the drop is reported");
});
