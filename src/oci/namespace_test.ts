import { assertEquals, assertThrows } from "../../tests/support/assert.ts";
import { RegistryError } from "./errors.ts";
import { resolveName } from "./namespace.ts";

Deno.test("ns parameter names the registry (containerd)", () => {
  assertEquals(resolveName("library/alpine", "registry.test", "docker.io"), {
    namespace: "registry.test",
    repository: "library/alpine",
  });
});

Deno.test("host-looking prefix names the registry (cri-o, podman, skopeo)", () => {
  assertEquals(resolveName("registry.k8s.io/pause", null, "docker.io"), {
    namespace: "registry.k8s.io",
    repository: "pause",
  });
  assertEquals(resolveName("ghcr.io/org/team/app", null, "docker.io"), {
    namespace: "ghcr.io",
    repository: "org/team/app",
  });
  assertEquals(resolveName("localhost:5000/x", null, "docker.io"), {
    namespace: "localhost:5000",
    repository: "x",
  });
  assertEquals(resolveName("localhost/x", null, "docker.io"), {
    namespace: "localhost",
    repository: "x",
  });
});

Deno.test("prefix and ns together: prefix stripped, ns decides (override_path)", () => {
  assertEquals(resolveName("registry.test/library/x", "registry.test", "docker.io"), {
    namespace: "registry.test",
    repository: "library/x",
  });
});

Deno.test("plain paths use the default namespace; Docker Hub single names get library/", () => {
  assertEquals(resolveName("alpine", null, "docker.io"), {
    namespace: "docker.io",
    repository: "library/alpine",
  });
  assertEquals(resolveName("bitnami/redis", null, "docker.io"), {
    namespace: "docker.io",
    repository: "bitnami/redis",
  });
  assertEquals(resolveName("alpine", null, "quay.io"), {
    namespace: "quay.io",
    repository: "alpine",
  });
  assertEquals(resolveName("alpine", "docker.io", "quay.io"), {
    namespace: "docker.io",
    repository: "library/alpine",
  });
});

Deno.test("a dotted single segment is a repository, not a registry", () => {
  assertEquals(resolveName("my.app", null, "docker.io"), {
    namespace: "docker.io",
    repository: "library/my.app",
  });
});

Deno.test("invalid names and ns values are NAME_INVALID", () => {
  for (
    const [name, ns] of [["Upper/case", null], ["a//b", null], ["../etc", null], [
      "a",
      "bad host/x",
    ], [
      "registry.test/..",
      null,
    ]] as const
  ) {
    const error = assertThrows(() => resolveName(name, ns, "docker.io"), RegistryError);
    assertEquals(error.code, "NAME_INVALID");
  }
});

Deno.test("a namespace with a port outside 1-65535 is no registry host", () => {
  for (const ns of ["registry.test:99999", "registry.test:0", "[::1]:70000"]) {
    const error = assertThrows(() => resolveName("x", ns, "docker.io"), RegistryError);
    assertEquals([error.code, error.status], ["NAME_INVALID", 400], ns);
  }
  // As a path prefix it is no host either, so it is read as (an invalid) repository name.
  const prefix = assertThrows(() => resolveName("registry.test:99999/x", null, "docker.io"));
  assertEquals((prefix as RegistryError).code, "NAME_INVALID");
  assertEquals(
    resolveName("x", "registry.test:65535", "docker.io").namespace,
    "registry.test:65535",
  );
});
