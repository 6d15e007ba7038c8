import { assertEquals, assertMatch } from "../../tests/support/assert.ts";
import { RegistryError } from "../oci/errors.ts";
import type { Storage } from "../storage/storage.ts";
import { readiness } from "./readiness.ts";

/** A store whose stat answers as `answer` says, counting the calls. */
function store(answer: () => Promise<null>) {
  const calls: string[] = [];
  const storage = {
    stat: (key: string) => {
      calls.push(key);
      return answer();
    },
  } as unknown as Storage;
  return { storage, calls };
}

Deno.test("readiness: ready while the store answers; one storage request a second at most", async () => {
  const clock = { now: 0 };
  const { storage, calls } = store(() => Promise.resolve(null));
  const ready = readiness(storage, { now: () => clock.now });
  for (let i = 0; i < 5; i++) assertEquals(await ready.check(), null);
  assertEquals(calls, ["readiness-probe"]);
  clock.now = 1000;
  assertEquals(await ready.check(), null);
  assertEquals(calls.length, 2);
  ready.shuttingDown();
  assertEquals(await ready.check(), "shutting down");
});

Deno.test("readiness: a failing or hanging store is not ready, and says why", async () => {
  const failing = store(() =>
    Promise.reject(new RegistryError("UNAVAILABLE", "S3 endpoint unreachable"))
  );
  assertEquals(
    await readiness(failing.storage).check(),
    "storage: S3 endpoint unreachable",
  );
  let release!: () => void;
  const hanging = store(() => new Promise((resolve) => release = () => resolve(null)));
  assertMatch(
    (await readiness(hanging.storage, { timeoutMs: 50 }).check())!,
    /^storage: no answer within 50 ms$/,
  );
  release();
});
