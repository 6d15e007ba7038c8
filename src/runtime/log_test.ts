import { assert, assertEquals } from "../../tests/support/assert.ts";
import { createLog, type LogOptions } from "./log.ts";

const decoder = new TextDecoder();

Deno.test("lines are batched into few writes, in order, each ending in a newline", async () => {
  const writes: string[] = [];
  const log = createLog({
    write: (bytes) => {
      writes.push(decoder.decode(bytes));
      return Promise.resolve(bytes.byteLength);
    },
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
  const log = createLog({
    write: async (bytes) => {
      await gate;
      writes.push(decoder.decode(bytes));
      return bytes.byteLength;
    },
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

/** What a log with these options writes for `use`. */
async function written(options: LogOptions, use: (log: ReturnType<typeof createLog>) => void) {
  const writes: string[] = [];
  const log = createLog({
    ...options,
    now: () => new Date("2026-12-01T12:00:00Z"),
    write: (bytes) => {
      writes.push(decoder.decode(bytes));
      return Promise.resolve(bytes.byteLength);
    },
  });
  use(log);
  await log.flush();
  return writes.join("");
}

const request = {
  method: "GET",
  target: "/v2/registry.test/library/x/manifests/1",
  status: 200,
  bytes: 1234,
  durationMs: 1.25,
  namespace: "registry.test",
  cache: "hit",
};

Deno.test("text: messages as they are, access lines with method, target, status, bytes, time", async () => {
  const text = await written({}, (log) => {
    log("store full: ...", "warn");
    log.access(request);
    log.access({ ...request, bytes: null, namespace: undefined, cache: undefined });
  });
  assertEquals(text.split("\n"), [
    "store full: ...",
    "GET /v2/registry.test/library/x/manifests/1 200 1234 1.3ms registry.test hit",
    "GET /v2/registry.test/library/x/manifests/1 200 - 1.3ms",
    "",
  ]);
});

Deno.test("json: one object per line with time and level; access entries keep their fields", async () => {
  const lines = (await written({ format: "json" }, (log) => {
    log("listening on http://127.0.0.1:8080");
    log("internal error on GET /x: Error: boom\n    at f", "error");
    log.access(request);
  })).trim().split("\n").map((line) => JSON.parse(line));
  assertEquals(lines, [
    { time: "2026-12-01T12:00:00.000Z", level: "info", msg: "listening on http://127.0.0.1:8080" },
    {
      time: "2026-12-01T12:00:00.000Z",
      level: "error",
      msg: "internal error on GET /x: Error: boom\n    at f",
    },
    { time: "2026-12-01T12:00:00.000Z", level: "info", msg: "request", ...request },
  ]);
});

Deno.test("--log-level drops what is below it; warn drops the access log", async () => {
  const text = await written({ level: "warn" }, (log) => {
    log("info line");
    log("debug line", "debug");
    log("warn line", "warn");
    log("error line", "error");
    log.access(request);
  });
  assertEquals(text, "warn line\nerror line\n");
  assertEquals(
    await written({ level: "debug" }, (log) => log("debug line", "debug")),
    "debug line\n",
  );
});
