import bcrypt from "bcryptjs";
import { assert, assertEquals, assertThrows } from "../../tests/support/assert.ts";
import { ConfigError } from "./upstreams.ts";
import { AccessControl, parseAuthConfig, parseHtpasswd } from "./access.ts";

// `htpasswd -Bbn alice secret` (apache2-utils writes $2y$ at cost 5).
const ALICE = "alice:$2y$05$no6QRFH5uSkAVy6uoIVfxOSbyfO6VRpgBmn13Sji.E4VNcA6L3og6";

Deno.test("htpasswd: bcrypt lines only, and the hash is never quoted", () => {
  const users = parseHtpasswd(`# comment\n\n${ALICE}\r\n`, "pw");
  assertEquals([...users.keys()], ["alice"]);
  for (const line of ["bob:$apr1$xyz$abc", "bob:{SHA}abc=", "bob:plain", "nohash"]) {
    const error = assertThrows(() => parseHtpasswd(line, "pw"), ConfigError);
    assert(!error.message.includes(line.split(":")[1] ?? "\u0000"), error.message);
  }
  assertThrows(() => parseHtpasswd(`${ALICE}\n${ALICE}`, "pw"), ConfigError);
});

Deno.test("config: rules, groups and defaults; mistakes name file and rule", () => {
  const config = parseAuthConfig(
    `htpasswd: users
groups:
  dev: [bob]
rules:
  - namespace: myorg
    repositories: ["app", "team/**"]
    users: [alice]
    groups: [dev]
    actions: [pull, push]
token:
  ttl: 2m
  secret_file: /run/key
`,
    "auth.yaml",
    "/etc/o",
  );
  assertEquals(config.htpasswdFile, "/etc/o/users");
  assertEquals(config.anonymousPull, true);
  assertEquals(config.token, {
    realm: undefined,
    service: "oci-registry",
    ttlMs: 120_000,
    secretFile: "/run/key",
  });
  for (
    const [yaml, message] of [
      ["rules: []", `"htpasswd"`],
      ["htpasswd: u\nanonymous_pull: maybe", "anonymous_pull"],
      ["htpasswd: u\nrules:\n  - namespace: x\n    users: [a]\n    actions: [read]", "rule 1"],
      ["htpasswd: u\nrules:\n  - namespace: x\n    actions: [pull]", "grants nobody"],
      ["htpasswd: u\nrules:\n  - users: [a]\n    actions: [pull]", "namespace"],
      ["htpasswd: u\nextra: 1", "unknown key"],
      ["htpasswd: u\ntoken:\n  realm: /token", "realm"],
      ["htpasswd: u\ntoken:\n  ttl: 0s", "ttl"],
      ["htpasswd: [", "invalid YAML"],
    ]
  ) {
    const error = assertThrows(() => parseAuthConfig(yaml, "auth.yaml", "/"), ConfigError);
    assert(error.message.includes("auth.yaml") && error.message.includes(message), error.message);
  }
});

async function withFiles(
  config: string,
  htpasswd: string,
  fn: (dir: string, access: AccessControl, clock: { now: number }) => Promise<void>,
) {
  const dir = await Deno.makeTempDir({ prefix: "access-test-" });
  try {
    await Deno.writeTextFile(`${dir}/auth.yaml`, config);
    await Deno.writeTextFile(`${dir}/htpasswd`, htpasswd);
    const clock = { now: 1_000_000 };
    const access = await AccessControl.load(`${dir}/auth.yaml`, {
      isPrivate: (namespace) => namespace === "private.test",
      log: () => {},
      now: () => clock.now,
    });
    await fn(dir, access, clock);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const RULES = `htpasswd: htpasswd
groups:
  readers: [carol]
rules:
  - namespace: private.test
    users: [alice]
    groups: [readers]
    actions: [pull]
  - namespace: myorg
    repositories: ["app/**"]
    users: [alice]
    actions: [pull, push, delete]
  - namespace: myorg
    repositories: [public]
    anonymous: true
    actions: [pull]
  - namespace: "*"
    repositories: [shared]
    users: ["*"]
    actions: [pull]
`;

Deno.test("policy: what each rule grants, and the anonymous default", async () => {
  await withFiles(RULES, ALICE, async (_dir, access) => {
    const policy = access.policy();
    const mirrored = (namespace: string, repository: string) => ({
      hosted: false,
      namespace,
      repository,
    });
    const hosted = (repository: string) => ({ hosted: true, namespace: "myorg", repository });
    // Public mirrored namespaces: anyone pulls, nobody writes without a rule.
    assert(policy.allows(null, mirrored("docker.io", "library/alpine"), "pull"));
    assert(!policy.allows(null, mirrored("docker.io", "library/alpine"), "push"));
    assert(!policy.allows("alice", mirrored("docker.io", "library/alpine"), "push"));
    // Private upstream: named users and groups only.
    assert(!policy.allows(null, mirrored("private.test", "team/x"), "pull"));
    assert(policy.allows("alice", mirrored("private.test", "team/x"), "pull"));
    assert(policy.allows("carol", mirrored("private.test", "team/x"), "pull"));
    assert(!policy.allows("bob", mirrored("private.test", "team/x"), "pull"));
    // Hosted: pattern by pattern.
    assert(policy.allows("alice", hosted("app/web"), "delete"));
    assert(!policy.allows("alice", hosted("other"), "pull"));
    assert(!policy.allows(null, hosted("app/web"), "pull"));
    assert(policy.allows(null, hosted("public"), "pull"));
    assert(!policy.allows(null, hosted("public"), "push"));
    // "*" is any authenticated user, never anonymous.
    assert(policy.allows("bob", hosted("shared"), "pull"));
    assert(!policy.allows(null, hosted("shared"), "pull"));
    assert(await policy.verifyPassword("alice", "secret"));
    assert(!await policy.verifyPassword("alice", "wrong"));
    assert(!await policy.verifyPassword("nobody", "secret"));
  });
});

Deno.test("anonymous_pull: false closes the default", async () => {
  await withFiles("htpasswd: htpasswd\nanonymous_pull: false\n", ALICE, async (_dir, access) => {
    await access.reload();
    const resource = { hosted: false, namespace: "docker.io", repository: "library/alpine" };
    assert(!access.policy().allows(null, resource, "pull"));
    assert(!access.policy().allows("alice", resource, "pull"));
  });
});

Deno.test("hot reload: new users and rules apply without restart; broken files keep the old", async () => {
  await withFiles(RULES, ALICE, async (dir, access, clock) => {
    const hostedOther = { hosted: true, namespace: "myorg", repository: "other" };
    assert(!access.policy().hasUser("dave"));
    const dave = `dave:${bcrypt.hashSync("pw", 4).replace("$2b$", "$2y$")}`;
    await Deno.writeTextFile(`${dir}/htpasswd`, `${ALICE}\n${dave}\n`);
    await Deno.writeTextFile(
      `${dir}/auth.yaml`,
      `${RULES}  - namespace: myorg\n    repositories: [other]\n    users: [dave]\n    actions: [pull]\n`,
    );
    // Within a second of the last check nothing is even looked at.
    assert(!access.policy().hasUser("dave"));
    clock.now += 1000;
    access.policy(); // starts the check in the background
    await access.reload();
    const policy = access.policy();
    assert(policy.hasUser("dave") && policy.allows("dave", hostedOther, "pull"));
    assert(await policy.verifyPassword("dave", "pw"));
    assert(policy.generation > 0);
    // A broken file is logged and ignored: the last good policy stays.
    await Deno.writeTextFile(`${dir}/auth.yaml`, "htpasswd: [");
    await access.reload();
    assert(access.policy().hasUser("dave"));
    await Deno.writeTextFile(`${dir}/htpasswd`, "dave:plain\n");
    await access.reload();
    assert(access.policy().hasUser("dave"));
  });
});
