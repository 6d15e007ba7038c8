import { assertEquals, assertThrows } from "../../tests/support/assert.ts";
import { RegistryError } from "../oci/errors.ts";
import { Filter } from "./filters.ts";

Deno.test("filters: allow and exclude lists for repositories and tags; 404 or 403", () => {
  const filter = new Filter({
    repositories: ["library/*", "bitnami/**"],
    excludeRepositories: ["library/ubuntu"],
    tags: ["v*", "latest"],
    excludeTags: ["*-rc*"],
  });
  filter.check("docker.io", "library/alpine", "latest");
  filter.check("docker.io", "bitnami/charts/redis", "v7.2");
  filter.check("docker.io", "library/alpine"); // a digest: no tag to check
  const refused = (repository: string, tag?: string) =>
    assertThrows(() => filter.check("docker.io", repository, tag), RegistryError);
  assertEquals(refused("library/ubuntu", "latest").code, "NAME_UNKNOWN");
  assertEquals(refused("someone/app", "latest").status, 404);
  assertEquals(
    refused("library/alpine", "3.19").message,
    "tag 3.19 of library/alpine is not mirrored from docker.io",
  );
  assertEquals(refused("library/alpine", "v2.0-rc1").code, "NAME_UNKNOWN");
  const strict = new Filter({ excludeRepositories: ["secret/**"], refusalStatus: 403 });
  const denied = assertThrows(() => strict.check("ghcr.io", "secret/x"), RegistryError);
  assertEquals([denied.code, denied.status], ["DENIED", 403]);
});
