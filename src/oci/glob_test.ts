import { assert, assertEquals } from "../../tests/support/assert.ts";
import { globToRegExp } from "./glob.ts";

Deno.test("globs: * and ? stay in a segment, ** crosses them", () => {
  const t = (glob: string, name: string) => globToRegExp(glob).test(name);
  assert(t("app", "app") && !t("app", "app2"));
  assert(t("team/*", "team/app") && !t("team/*", "team/a/b"));
  assert(t("team/**", "team/a/b") && t("**", "x/y/z") && t("**", ""));
  assert(t("*.example.com", "registry.example.com") && !t("*.example.com", "a/b.example.com"));
  assert(t("app-?", "app-1") && !t("app-?", "app-10"));
  assert(t("a.b+c", "a.b+c") && !t("a.b", "axb"), "regex characters are literal");
});

Deno.test("globs: * within a segment, ** across, ? one character; everything else literal", () => {
  const repo = (glob: string, value: string) => globToRegExp(glob, true).test(value);
  assertEquals(repo("library/*", "library/alpine"), true);
  assertEquals(repo("library/*", "library/a/b"), false);
  assertEquals(repo("bitnami/**", "bitnami/charts/redis"), true);
  assertEquals(repo("team-?/app", "team-a/app"), true);
  assertEquals(repo("a.b/c", "aXb/c"), false, "a dot is a dot");
  assertEquals(repo("library/alpine", "library/alpine2"), false, "anchored");
  assertEquals(globToRegExp("v1.*", false).test("v1.2/x"), true, "tags have no segments");
});
