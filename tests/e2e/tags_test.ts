/**
 * Tag listing passes through to the real upstream (distribution 2.8.2 does not paginate; the
 * Link rewriting for upstreams that do is covered in src/server_test.ts).
 */
import { assertEquals } from "../support/assert.ts";
import { buildImage, pushImage } from "../support/images.ts";
import { startMirror } from "../support/mirror.ts";
import { startUpstream } from "../support/upstream.ts";

Deno.test("tags/list through the mirror, by ns and by prefix", async () => {
  await using up = await startUpstream();
  await using mirror = await startMirror({
    upstreams: [{ namespace: "registry.test", host: up.host, tls: false }],
  });
  const image = buildImage();
  for (const tag of ["a", "b", "c"]) await pushImage(up, "library/listed", tag, image);

  const all = await mirror.fetch(`/v2/registry.test/library/listed/tags/list`);
  assertEquals(all.status, 200);
  const body = await all.json();
  assertEquals(body.name, "library/listed");
  assertEquals(body.tags.toSorted(), ["a", "b", "c"]);

  const byNs = await mirror.fetch(`/v2/library/listed/tags/list?ns=registry.test&n=10`);
  assertEquals((await byNs.json()).tags.toSorted(), ["a", "b", "c"]);

  const missing = await mirror.fetch(`/v2/registry.test/library/nothing/tags/list`);
  assertEquals(missing.status, 404);
  assertEquals((await missing.json()).errors[0].code, "NAME_UNKNOWN");
});
