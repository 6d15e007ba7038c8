/**
 * Hostile and idle connections against the mirror process (src/http/connections.ts): a client
 * holding more sockets than the descriptor limit, half-sent request heads, idle keep-alive
 * connections and a full set of busy connections must neither stop the process nor lock out a
 * normal client, and idle sockets must be closed on time.
 */
import { assert, assertEquals } from "../support/assert.ts";
import { startMirror } from "../support/mirror.ts";
import { slowUpstream } from "../support/slow_upstream.ts";
import { closeQuietly, waitFor } from "../support/tools.ts";

const encoder = new TextEncoder();
const MIRROR = [
  Deno.execPath(),
  "run",
  "-A",
  "--v8-flags=--expose-gc,--max-semi-space-size=1",
  "src/main.ts",
];

/** The mirror under a real descriptor limit (soft and hard), as `ulimit -n` would set it. */
function limited(descriptors: number): string[] {
  return ["prlimit", `--nofile=${descriptors}:${descriptors}`, ...MIRROR];
}

/** Resolves with the time (performance.now()) at which the peer closed the connection. */
async function closedAt(conn: Deno.Conn): Promise<number> {
  const buffer = new Uint8Array(4096);
  try {
    while (await conn.read(buffer) !== null) { /* discard */ }
  } catch { /* reset: closed too */ }
  return performance.now();
}

/** One request on a raw socket; returns the status line and the socket (kept open). */
async function rawRequest(
  port: number,
  path: string,
): Promise<{ status: string; conn: Deno.Conn }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(encoder.encode(`GET ${path} HTTP/1.1\r\nHost: mirror.test\r\n\r\n`));
  const buffer = new Uint8Array(8192);
  const n = await conn.read(buffer) ?? 0;
  return { status: new TextDecoder().decode(buffer.subarray(0, n)).split("\r\n")[0], conn };
}

async function timedFetch(url: string): Promise<{ status: number; body: string; ms: number }> {
  const started = performance.now();
  const response = await fetch(url, { signal: AbortSignal.timeout(5000) });
  const body = await response.text();
  return { status: response.status, body, ms: performance.now() - started };
}

Deno.test("connections: 2,000 half-sent heads under ulimit -n 1024 neither stop the mirror nor lock out a client", async () => {
  await using mirror = await startMirror({
    command: limited(1024),
    extraArgs: ["--header-timeout", "2s", "--idle-timeout", "30s"],
  });
  const conns: Deno.Conn[] = [];
  const closings: Promise<number>[] = [];
  const opened = performance.now();
  try {
    for (let i = 0; i < 2000; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: mirror.port });
      conns.push(conn);
      await conn.write(encoder.encode("GET / HTTP/1.1\r\nHo")).catch(() => 0);
      closings.push(closedAt(conn));
    }
    // While the attacker holds its sockets, a normal client is answered within a second.
    const during = await timedFetch(`${mirror.url}/v2/`);
    assertEquals(during.status, 200, `GET /v2/ while 2,000 heads are pending: ${during.body}`);
    assert(during.ms < 1000, `answered in ${during.ms.toFixed(0)} ms`);
    assert(mirror.running(), "the mirror process is still up");

    // Every half-sent head is closed by the server, none later than the header timeout allows.
    const times = await Promise.all(closings);
    const last = Math.max(...times) - opened;
    assert(last < 2000 + 3000, `last half-open connection closed after ${last.toFixed(0)} ms`);
    const late = times.filter((t) => t - opened >= 1500).length;
    assert(late > 0, "connections that got a slot were kept until their header timeout");

    const after = await timedFetch(`${mirror.url}/v2/`);
    assertEquals(after.status, 200);
    // The server's own count follows (it learns of each close a moment after the client does).
    await waitFor(async () => {
      const metrics = await timedFetch(`${mirror.url}/metrics`);
      const open = /^oci_registry_http_connections_open (\d+)$/m.exec(metrics.body);
      return open !== null && Number(open[1]) <= 2;
    }, { timeoutMs: 3000, message: "oci_registry_http_connections_open to fall back to 1" });
    assert(mirror.running());
  } finally {
    for (const conn of conns) closeQuietly(conn);
  }
});

Deno.test("connections: an idle keep-alive connection is closed after --idle-timeout", async () => {
  await using mirror = await startMirror({
    extraArgs: ["--header-timeout", "5s", "--idle-timeout", "1500ms"],
  });
  const { status, conn } = await rawRequest(mirror.port, "/v2/");
  const answered = performance.now();
  try {
    assertEquals(status, "HTTP/1.1 200 OK");
    const idleMs = await closedAt(conn) - answered;
    assert(idleMs >= 1300 && idleMs < 1500 + 1500, `closed after ${idleMs.toFixed(0)} ms idle`);
  } finally {
    closeQuietly(conn);
  }
});

Deno.test("connections: --unguarded-connections is plain Deno.serve: the idle connection stays", async () => {
  // The contrast to the test above, and what the bench's "Guard cost" rows compare with.
  await using mirror = await startMirror({
    extraArgs: ["--unguarded-connections", "--idle-timeout", "500ms"],
  });
  await mirror.waitForLog(/connections unguarded/);
  const { status, conn } = await rawRequest(mirror.port, "/v2/");
  try {
    assertEquals(status, "HTTP/1.1 200 OK");
    const stillOpen = await Promise.race([
      closedAt(conn).then(() => false),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(true), 2000)),
    ]);
    assert(stillOpen, "an unguarded idle connection is not closed by the server");
  } finally {
    closeQuietly(conn);
  }
});

Deno.test("connections: a --max-connections the descriptor limit cannot hold is lowered, and holds", async () => {
  // Past the limit Deno itself panics (measured), so the cap must stay below it whatever the
  // flag says: under ulimit -n 256 at most (256 - 128) / 2 = 64 connections are kept.
  await using mirror = await startMirror({
    command: limited(256),
    extraArgs: ["--max-connections", "100000", "--header-timeout", "2s"],
  });
  await mirror.waitForLog(/--max-connections 100000 lowered to 64/);
  const conns: Deno.Conn[] = [];
  try {
    for (let i = 0; i < 600; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: mirror.port });
      conns.push(conn);
      await conn.write(encoder.encode("GET / HTTP/1.1\r\nHo")).catch(() => 0);
    }
    const during = await timedFetch(`${mirror.url}/v2/`);
    assertEquals(during.status, 200);
    assert(mirror.running(), "the mirror process is still up");
  } finally {
    for (const conn of conns) closeQuietly(conn);
  }
  await waitFor(async () => (await timedFetch(`${mirror.url}/v2/`)).status === 200, {
    timeoutMs: 5000,
    message: "GET /v2/ after the client let go",
  });
  assert(mirror.running());
});

Deno.test("connections: a response slower than both timeouts is not cut; a full house gets a clean 503", async () => {
  await using upstream = slowUpstream(2500);
  const digest = upstream.digest;
  await using mirror = await startMirror({
    upstreams: [{ namespace: "slow.test", host: upstream.host, tls: false }],
    extraArgs: ["--max-connections", "2", "--header-timeout", "1s", "--idle-timeout", "1s"],
  });
  const path = `/v2/slow.test/library/x/blobs/${digest}`;
  const slow = [fetch(mirror.url + path), fetch(mirror.url + path)];
  await new Promise((resolve) => setTimeout(resolve, 500));
  // Both slots are busy with responses in progress: a third client is told so, cleanly.
  const third = await timedFetch(`${mirror.url}/v2/`);
  assertEquals(third.status, 503);
  assertEquals(JSON.parse(third.body).errors[0].code, "UNAVAILABLE");
  for (const response of await Promise.all(slow)) {
    assertEquals(response.status, 200);
    const bytes = new Uint8Array(await response.arrayBuffer());
    assertEquals(bytes, upstream.blob, "the 2.5 s body arrived whole despite 1 s timeouts");
  }
  const after = await timedFetch(`${mirror.url}/v2/`);
  assertEquals(after.status, 200);
});
