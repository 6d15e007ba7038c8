import { assertEquals, assertThrows } from "../../tests/support/assert.ts";
import { ConfigError, parseConfigFile, UpstreamRegistry } from "./upstreams.ts";
import { checkHostedNames, combineHosted } from "./hosted.ts";

const none = new UpstreamRegistry([]);

Deno.test("hosted names: repository name components, not the default namespace, no repeats", () => {
  assertEquals(checkHostedNames(["myorg", "team.a", "myorg", "x_y"], "--hosted", "docker.io"), [
    "myorg",
    "team.a",
    "x_y",
  ]);
  for (
    const [name, message] of [
      ["My-Org", '--hosted: "My-Org" is not a repository name component'],
      ["a/b", '"a/b" is not a repository name component'],
      ["-x", '"-x" is not a repository name component'],
      ["", '"" is not a repository name component'],
      ["docker.io", '--hosted: "docker.io" is the default namespace, which is mirrored'],
    ]
  ) {
    assertThrows(() => checkHostedNames([name], "--hosted", "docker.io"), ConfigError, message);
  }
});

Deno.test("hosted: the flag's and the file's combine, flag's first, each once", () => {
  const file = { source: "up.yaml", names: ["internal", "myorg"] };
  assertEquals(combineHosted(["myorg", "ci"], file, "docker.io", none), [
    "myorg",
    "ci",
    "internal",
  ]);
  assertEquals(combineHosted([], file, "docker.io", none), ["internal", "myorg"]);
  assertEquals(combineHosted(["myorg"], undefined, "docker.io", none), ["myorg"]);
  assertEquals(combineHosted([], { source: "up.yaml", names: [] }, "docker.io", none), []);
});

Deno.test("hosted: the file's mistakes name the file and key; upstream clashes name the source", () => {
  const fails = (flag: string[], names: string[], message: string, defaultNs = "docker.io") => {
    const { upstreams } = parseConfigFile(
      "upstreams:\n  - namespace: ghcr.io\n    host: ghcr.io\n",
      "up.yaml",
    );
    assertThrows(
      () =>
        combineHosted(
          flag,
          { source: "up.yaml", names },
          defaultNs,
          new UpstreamRegistry(upstreams),
        ),
      ConfigError,
      message,
    );
  };
  fails([], ["MyOrg"], 'up.yaml: key "hosted": "MyOrg" is not a repository name component');
  fails([], ["docker.io"], 'up.yaml: key "hosted": "docker.io" is the default namespace');
  fails([], ["reg.test"], 'up.yaml: key "hosted": "reg.test" is the default namespace', "reg.test");
  fails(
    [],
    ["ghcr.io"],
    'up.yaml: key "hosted": "ghcr.io" is also a configured upstream namespace',
  );
  fails(["ghcr.io"], [], '--hosted: "ghcr.io" is also a configured upstream namespace');
});
