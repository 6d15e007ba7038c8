import { assertEquals, assertRejects } from "../../tests/support/assert.ts";
import { SingleFlight } from "./single_flight.ts";

Deno.test("concurrent callers of a key share one run, failures included; then it is free", async () => {
  const flights = new SingleFlight<number>();
  let runs = 0;
  let release!: () => void;
  const gate = new Promise<void>((resolve) => release = resolve);
  const work = async () => {
    runs++;
    await gate;
    return runs;
  };
  const both = Promise.all([flights.run("a", work), flights.run("a", work)]);
  assertEquals(flights.size, 1);
  release();
  assertEquals(await both, [1, 1]);
  assertEquals(flights.size, 0);
  assertEquals(await flights.run("a", work), 2, "a settled key runs again");

  const failing = () => Promise.reject(new Error("down"));
  const first = flights.run("b", failing);
  const second = flights.run("b", () => Promise.resolve(7));
  await assertRejects(() => first, Error, "down");
  await assertRejects(() => second, Error, "down");
  assertEquals(await flights.run("b", () => Promise.resolve(7)), 7);
});
