import { assert, assertEquals, assertMatch } from "../../tests/support/assert.ts";
import { bytes, renderStatusPage, type StatusSnapshot, wantsHtml } from "./status_page.ts";

const snapshot: StatusSnapshot = {
  version: "1.2.3",
  storage: "filesystem /data",
  startedAt: new Date(0),
  now: new Date(90_000),
  cache: {
    bytes: 3 << 20,
    maxBytes: 4 << 20,
    entries: 5,
    evictions: 2,
    repositories: [{ namespace: "docker.io", repository: "library/<b>x</b>", tags: 2, bytes: 1 }],
  },
  lookups: [
    { kind: "blob", result: "hit", count: 3 },
    { kind: "blob", result: "miss", count: 1 },
  ],
  upstreams: [{ namespace: "docker.io", requests: 10, errors: 0, remaining: 7, limit: 100 }],
  recentErrors: [{ time: new Date(1000), level: "warn", message: "token <secret> & co" }],
};

Deno.test("status page: figures, escaping, no script", () => {
  const html = renderStatusPage(snapshot);
  assertMatch(html, /3\.0 MiB of 4\.0 MiB \(75\.0%\)<\/span>, 5 objects, 2 images evicted/);
  assertMatch(html, /id="hit-rate">75\.0%<\/strong> of 4 lookups/);
  assertMatch(html, /<td>7 of 100<\/td>/);
  assert(html.includes("library/&#60;b&#62;x&#60;/b&#62;"));
  assert(html.includes("token &#60;secret&#62; &#38; co"));
  assert(!/<script/i.test(html));
  const unbounded = renderStatusPage({ ...snapshot, cache: undefined, lookups: [] });
  assertMatch(unbounded, /tracked with <code>--max-cache-size<\/code>/);
  assertMatch(unbounded, /no lookups yet/);
  const hidden = renderStatusPage({ ...snapshot, repositoriesHidden: true });
  assert(!hidden.includes("library/") && hidden.includes("Not listed: access rules"));
});

Deno.test("status page: only for requests that ask for HTML; sizes read well", () => {
  const accept = (value: string) => new Request("http://x/", { headers: { accept: value } });
  assert(wantsHtml(accept("text/html,application/xhtml+xml,*/*;q=0.8")));
  assert(wantsHtml(accept("application/json, text/html;q=0.9")));
  assert(!wantsHtml(accept("*/*")));
  assert(!wantsHtml(new Request("http://x/")));
  assertEquals([bytes(512), bytes(1536), bytes(5 * 2 ** 30)], ["512 B", "1.5 KiB", "5.0 GiB"]);
});
