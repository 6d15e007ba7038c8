import { assertEquals } from "../../tests/support/assert.ts";
import { LruCache } from "./lru.ts";

Deno.test("LRU evicts the least recently used entries beyond its size", () => {
  const cache = new LruCache<string>(10, (value) => value.length);
  cache.set("a", "aaaa");
  cache.set("b", "bbbb");
  assertEquals(cache.get("a"), "aaaa"); // a is now the most recent
  cache.set("c", "cccc"); // 12 > 10: b goes
  assertEquals(cache.get("b"), undefined);
  assertEquals(cache.get("a"), "aaaa");
  assertEquals(cache.get("c"), "cccc");
  assertEquals(cache.size, 8);
});

Deno.test("LRU replaces, deletes, and never holds an entry larger than itself", () => {
  const cache = new LruCache<string>(5, (value) => value.length);
  cache.set("a", "12");
  cache.set("a", "123");
  assertEquals(cache.size, 3);
  cache.set("huge", "123456");
  assertEquals(cache.get("huge"), undefined);
  assertEquals(cache.get("a"), "123");
  cache.delete("a");
  assertEquals(cache.size, 0);
});
