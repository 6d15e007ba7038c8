import assert from "node:assert/strict";
import { RegistryError } from "../oci/errors.ts";
import { AddressPolicy, parseIPv4, parseIPv6, refusalFor } from "./address_policy.ts";

Deno.test("refusalFor: non-public IPv4 ranges", () => {
  const refused: Record<string, string> = {
    "127.0.0.1": "loopback",
    "127.255.1.2": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "172.31.255.254": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",
    "0.0.0.0": "unspecified",
    "0.1.2.3": "this network",
    "100.64.0.1": "shared address space",
    "224.0.0.1": "multicast",
    "255.255.255.255": "broadcast",
    "240.0.0.1": "reserved",
  };
  for (const [address, reason] of Object.entries(refused)) {
    assert.equal(refusalFor(address), reason, address);
  }
  for (const address of ["8.8.8.8", "172.15.0.1", "172.32.0.1", "93.184.216.34", "100.128.0.1"]) {
    assert.equal(refusalFor(address), undefined, address);
  }
});

Deno.test("refusalFor: non-public IPv6 ranges, including embedded IPv4", () => {
  const refused: Record<string, string> = {
    "::": "unspecified",
    "::1": "loopback",
    "0:0:0:0:0:0:0:1": "loopback",
    "fe80::1": "link-local",
    "fe80::1%eth0": "link-local",
    "febf::1": "link-local",
    "fc00::1": "unique local (private)",
    "fd12:3456::1": "unique local (private)",
    "ff02::1": "multicast",
    "::ffff:127.0.0.1": "loopback",
    "::ffff:7f00:1": "loopback",
    "::ffff:10.0.0.1": "private",
    "::ffff:169.254.169.254": "link-local",
    "64:ff9b::a9fe:a9fe": "link-local",
  };
  for (const [address, reason] of Object.entries(refused)) {
    assert.equal(refusalFor(address), reason, address);
  }
  for (const address of ["2001:4860:4860::8888", "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8"]) {
    assert.equal(refusalFor(address), undefined, address);
  }
  assert.equal(refusalFor("not-an-ip"), "not an IP address");
});

Deno.test("parseIPv4 and parseIPv6 are strict", () => {
  assert.deepEqual(parseIPv4("1.2.3.4"), [1, 2, 3, 4]);
  for (const bad of ["1.2.3", "1.2.3.256", "01.2.3.4", "1.2.3.4.5", "a.b.c.d", ""]) {
    assert.equal(parseIPv4(bad), undefined, bad);
  }
  assert.deepEqual(parseIPv6("1::"), [1, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(parseIPv6("::ffff:1.2.3.4"), [0, 0, 0, 0, 0, 0xffff, 0x0102, 0x0304]);
  assert.deepEqual(parseIPv6("1:2:3:4:5:6:7:8"), [1, 2, 3, 4, 5, 6, 7, 8]);
  for (
    const bad of [
      "1:2:3:4:5:6:7",
      "1::2::3",
      "12345::",
      "1.2.3.4::",
      "g::1",
      "1:2:3:4:5:6:7:8:9",
      "localhost",
    ]
  ) {
    assert.equal(parseIPv6(bad), undefined, bad);
  }
});

async function denied(policy: AddressPolicy, url: string): Promise<RegistryError> {
  try {
    await policy.check(new URL(url));
  } catch (e) {
    assert.ok(e instanceof RegistryError);
    assert.equal(e.code, "DENIED", e.message);
    assert.equal(e.status, 403);
    return e;
  }
  assert.fail(`${url} was allowed`);
}

Deno.test("AddressPolicy refuses literals, localhost and names resolving to private addresses", async () => {
  const lookups: string[] = [];
  const policy = new AddressPolicy({
    resolve: (name) => {
      lookups.push(name);
      const table: Record<string, string[]> = {
        "registry.example": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
        "sneaky.example": ["93.184.216.34", "10.0.0.5"],
        "metadata.example": ["169.254.169.254"],
      };
      return Promise.resolve(table[name] ?? []);
    },
  });
  const loopback = await denied(policy, "https://127.0.0.1:5000/v2/");
  assert.match(loopback.message, /127\.0\.0\.1 is not allowed: loopback/);
  await denied(policy, "https://10.1.2.3/v2/");
  await denied(policy, "https://[::1]:5000/v2/");
  await denied(policy, "https://[::ffff:192.168.0.1]/v2/");
  await denied(policy, "https://0x7f.1/v2/"); // the URL parser normalises this to 127.0.0.1
  await denied(policy, "https://2130706433/v2/");
  await denied(policy, "https://localhost:5000/v2/");
  await denied(policy, "https://LOCALHOST./v2/");
  await denied(policy, "https://registry.localhost/v2/");
  const sneaky = await denied(policy, "https://sneaky.example/v2/");
  assert.match(sneaky.message, /resolves to 10\.0\.0\.5 \(private\)/);
  await denied(policy, "http://metadata.example/latest/meta-data");
  assert.deepEqual(lookups, ["sneaky.example", "metadata.example"]);

  await policy.check(new URL("https://registry.example/v2/"));
  await policy.check(new URL("https://8.8.8.8/v2/"));
  await policy.check(new URL("https://[2001:4860:4860::8888]/v2/"));
});

Deno.test("AddressPolicy caches decisions briefly and does not cache DNS failures", async () => {
  let now = 0;
  let answer: string[] | Error = ["93.184.216.34"];
  let lookups = 0;
  const policy = new AddressPolicy({
    cacheTtlMs: 1000,
    now: () => now,
    resolve: () => {
      lookups++;
      return answer instanceof Error ? Promise.reject(answer) : Promise.resolve(answer);
    },
  });
  await Promise.all([
    policy.check(new URL("https://r.example/")),
    policy.check(new URL("https://r.example/")),
  ]);
  await policy.check(new URL("https://R.example/x"));
  assert.equal(lookups, 1);
  answer = ["127.0.0.1"]; // DNS rebinding after the decision
  await policy.check(new URL("https://r.example/"));
  now += 1000;
  await denied(policy, "https://r.example/");
  assert.equal(lookups, 2);

  answer = Object.assign(new Error("getaddrinfo ENOTFOUND"), { code: "ENOTFOUND" });
  for (let i = 0; i < 2; i++) {
    await assert.rejects(policy.check(new URL("https://missing.example/")), (e: unknown) => {
      assert.ok(e instanceof RegistryError);
      assert.equal(e.code, "UNAVAILABLE");
      assert.match(e.message, /cannot resolve upstream host missing\.example: ENOTFOUND/);
      return true;
    });
  }
  assert.equal(lookups, 4);
});

Deno.test("AddressPolicy with allowPrivateAddresses allows everything", async () => {
  const policy = new AddressPolicy({
    allowPrivateAddresses: true,
    resolve: () => Promise.reject(new Error("must not be called")),
  });
  await policy.check(new URL("http://127.0.0.1:5000/"));
  await policy.check(new URL("http://localhost/"));
  await policy.check(new URL("http://internal.example/"));
});

Deno.test("AddressPolicy uses the system resolver by default (localhost via /etc/hosts)", async () => {
  const { systemResolver } = await import("./address_policy.ts");
  const addresses = await systemResolver("localhost");
  assert.ok(addresses.length > 0);
  assert.ok(addresses.every((a) => refusalFor(a) === "loopback"), addresses.join(","));
});
