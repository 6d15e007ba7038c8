import { assertEquals, assertThrows } from "./assert.ts";
import { parsePrometheus } from "./prometheus.ts";

Deno.test("prometheus parser: types, labels with escapes, sums; malformed lines throw", () => {
  const scrape = parsePrometheus([
    "# HELP x_total Things.",
    "# TYPE x_total counter",
    'x_total{kind="blob",result="hit"} 3',
    'x_total{kind="blob",result="miss"} 2',
    'x_total{kind="manifest",result="a \\"quoted\\", value"} 1',
    "# TYPE g gauge",
    "g 1.5e3",
    "",
  ].join("\n"));
  assertEquals(scrape.types.get("x_total"), "counter");
  assertEquals(scrape.value("x_total", { kind: "blob", result: "hit" }), 3);
  assertEquals(scrape.sum("x_total", { kind: "blob" }), 5);
  assertEquals(scrape.value("x_total", { result: 'a "quoted", value' }), 1);
  assertEquals(scrape.value("g"), 1500);
  assertEquals(scrape.value("absent"), 0);
  assertThrows(() => scrape.value("x_total", { kind: "blob" }));
  assertThrows(() => parsePrometheus("# TYPE a counter\na{b=c} 1"));
  assertThrows(() => parsePrometheus("undeclared 1"));
  assertThrows(() => parsePrometheus("# TYPE a gauge\na one"));
});
