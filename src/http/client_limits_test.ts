import { assertEquals, assertThrows } from "../../tests/support/assert.ts";
import { FakeUpstream, randomBytes } from "../../tests/support/fake_upstream.ts";
import { Mirror } from "../mirror/mirror.ts";
import { UpstreamRegistry } from "../config/upstreams.ts";
import { digestOf } from "../oci/digest.ts";
import { Metrics } from "../runtime/metrics.ts";
import { RegistryError } from "../oci/errors.ts";
import { createHandler } from "./server.ts";
import { FilesystemStorage } from "../storage/filesystem.ts";
import { ClientLimits } from "./client_limits.ts";

Deno.test("client rate: one second's worth at once, then Retry-After until it refills", () => {
  const clock = { now: 0 };
  const limits = new ClientLimits({ rate: 4 }, () => clock.now);
  for (let i = 0; i < 4; i++) limits.admit("address:10.0.0.1");
  const error = assertThrows(() => limits.admit("address:10.0.0.1"), RegistryError);
  assertEquals([error.status, error.code, error.headers["retry-after"]], [
    429,
    "TOOMANYREQUESTS",
    "1",
  ]);
  limits.admit("address:10.0.0.2"); // another client is not affected
  clock.now += 250; // a quarter second refills one request
  limits.admit("address:10.0.0.1");
  assertThrows(() => limits.admit("address:10.0.0.1"), RegistryError);
  assertEquals(limits.refused.rate, 2);
  const slow = new ClientLimits({ rate: 0.1 }, () => clock.now);
  slow.admit("user:alice");
  const wait = assertThrows(() => slow.admit("user:alice"), RegistryError);
  assertEquals(wait.headers["retry-after"], "10");
});

Deno.test("client downloads: counted until the response is sent", async () => {
  const limits = new ClientLimits({ downloads: 2 });
  const first = Promise.withResolvers<void>();
  const second = Promise.withResolvers<void>();
  limits.startDownload("user:alice", first.promise);
  limits.startDownload("user:alice", second.promise);
  limits.startDownload("user:bob", Promise.withResolvers<void>().promise);
  assertEquals(limits.activeDownloads, 3);
  const error = assertThrows(
    () => limits.startDownload("user:alice", Promise.resolve()),
    RegistryError,
  );
  assertEquals([error.status, error.headers["retry-after"]], [429, "1"]);
  first.reject(new Error("client went away")); // a broken send ends the download too
  await first.promise.catch(() => {});
  await Promise.resolve();
  limits.startDownload("user:alice", Promise.resolve());
  assertEquals(limits.refused.downloads, 1);
  // Without limits (or without a way to know when a response is sent) nothing is counted.
  new ClientLimits({}).startDownload("x", Promise.withResolvers<void>().promise);
  new ClientLimits({}).admit("x");
});

Deno.test("through the handler: 429 over the rate, and over the downloads a client has running", async () => {
  const root = await Deno.makeTempDir({ prefix: "limits-test-" });
  const storage = new FilesystemStorage(root);
  const upstream = new FakeUpstream();
  const metrics = new Metrics();
  const mirror = new Mirror({
    storage,
    upstream,
    upstreams: new UpstreamRegistry([]),
    spoolDir: storage.tempDir,
    metrics,
  });
  const limits = new ClientLimits({ rate: 1000, downloads: 1 });
  const handler = createHandler({
    mirror,
    defaultNamespace: "docker.io",
    metrics,
    log: () => {},
    limits,
  });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
  const url = `http://127.0.0.1:${server.addr.port}`;
  try {
    const digest = upstream.addBlob(randomBytes(2 << 20));
    upstream.chunkDelayMs = 20;
    upstream.chunkSize = 256 << 10;
    const first = await fetch(`${url}/v2/library/x/blobs/${digest}`);
    assertEquals(first.status, 200);
    // The first download is still being sent: a second one from the same client waits.
    const second = await fetch(`${url}/v2/library/x/blobs/${digest}`);
    assertEquals([second.status, second.headers.get("retry-after")], [429, "1"]);
    await second.body?.cancel();
    // Other requests are not downloads.
    const head = await fetch(`${url}/v2/library/x/blobs/${digest}`, { method: "HEAD" });
    assertEquals(head.status, 200);
    assertEquals(digestOf(new Uint8Array(await first.arrayBuffer())), digest);
    let third = 0;
    for (let i = 0; i < 50 && third !== 200; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      const r = await fetch(`${url}/v2/library/x/blobs/${digest}`);
      await r.body?.cancel();
      third = r.status;
    }
    assertEquals(third, 200, "once sent, the download no longer counts");
  } finally {
    await server.shutdown();
    await mirror.settled();
    await storage.close();
    await Deno.remove(root, { recursive: true });
  }
});
