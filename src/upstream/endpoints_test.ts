import { assertEquals } from "../../tests/support/assert.ts";
import { defaultUpstream, type UpstreamConfig } from "../config/upstreams.ts";
import { EndpointHealth, endpointsOf } from "./endpoints.ts";

const upstream: UpstreamConfig = {
  ...defaultUpstream("docker.io"),
  configured: true,
  failoverBackoffMs: 1000,
  endpoints: ["a:5000", "b:5000", "c:5000"].map((host) => ({
    host,
    tls: false,
    acceptInvalidCerts: false,
  })),
};

Deno.test("endpoints: the first up in order; a failing one skipped for a doubling backoff", () => {
  const clock = { now: 0 };
  const logs: string[] = [];
  const health = new EndpointHealth((line) => logs.push(line), () => clock.now);
  const endpoints = endpointsOf(upstream);
  const pick = (blocked: string[] = []) =>
    health.pick(endpoints, (e) => blocked.includes(e.host)).host;
  assertEquals(pick(), "a:5000");
  assertEquals(pick(["a:5000"]), "b:5000", "a rate-limited endpoint is passed over");
  health.failed(endpoints[0], "connection refused");
  assertEquals(pick(), "b:5000");
  clock.now = 1000;
  assertEquals(pick(), "a:5000", "back after 1 s");
  health.failed(endpoints[0], "connection refused");
  clock.now = 2999;
  assertEquals(pick(), "b:5000", "the second failure in a row doubles the backoff");
  health.failed(endpoints[1], "503");
  health.failed(endpoints[2], "503");
  assertEquals(pick(), "a:5000", "all skipped: the one due back first (a, at 3 s)");
  assertEquals(health.hasAlternative(endpoints, endpoints[0]), false);
  clock.now = 3000;
  health.succeeded(endpoints[0]);
  assertEquals(pick(), "a:5000");
  assertEquals(logs.filter((l) => l.includes("answers again")).length, 1);
});

Deno.test("endpoints: a namespace without hosts: is its own single endpoint", () => {
  const single = defaultUpstream("quay.io");
  assertEquals(endpointsOf(single), [single]);
  const health = new EndpointHealth(() => {});
  health.failed(single, "down"); // nothing to fail over to: not skipped
  assertEquals(health.isUp(single), true);
});
