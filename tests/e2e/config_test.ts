/**
 * Start-up and configuration as an operator meets them: mistakes stop the process with one
 * clear line (never a stack trace, never a secret), TLS options per upstream, the private
 * address guard, the Unix socket listener, and hosted namespaces named in the upstream file.
 */
import { assert, assertEquals, assertMatch } from "../support/assert.ts";
import { buildImage, pushImage, pushRandomBlob, skopeoPullDir } from "../support/images.ts";
import { digestOf } from "../../src/oci/digest.ts";
import { startMirror } from "../support/mirror.ts";
import { RegistryClient } from "../support/registry_client.ts";
import { startUpstream } from "../support/upstream.ts";
import { sha256File, tempDir } from "../support/tools.ts";

const NS = "registry.test";

async function failedStart(
  options: Parameters<typeof startMirror>[0],
  exitCode = 2,
): Promise<string> {
  await using mirror = await startMirror({ ...options, noWait: true });
  const status = await mirror.waitForExit();
  assertEquals(status.code, exitCode, mirror.logs());
  const output = mirror.logs();
  assert(!/\n\s+at /.test(output), `no stack trace:\n${output}`);
  return output;
}

Deno.test("a bad upstream file stops start-up naming the file, entry and key", async () => {
  const output = await failedStart({
    upstreamConfigYaml:
      "- namespace: ghcr.io\n  host: ghcr.io\n  manifest_invalidation_time: soon\n",
  });
  assertMatch(output, /upstreams\.yaml: entry 1 \(ghcr\.io\): key "manifest_invalidation_time"/);
  const yaml = await failedStart({ upstreamConfigYaml: "- namespace: [\n" });
  assertMatch(yaml, /upstreams\.yaml: invalid YAML/);
});

Deno.test("an upstream on a port fetch refuses stops start-up with one line naming the key", async () => {
  const output = await failedStart({
    upstreamConfigYaml: "- namespace: registry.test\n  host: 127.0.0.1:6666\n  tls: false\n",
  });
  const lines = output.split("\n").filter((line) => line.trim() !== "");
  assertEquals(lines.length, 1, output);
  assertMatch(
    lines[0],
    /^oci-registry: .*upstreams\.yaml: entry 1 \(registry\.test\): key "host" \(127\.0\.0\.1:6666\): port 6666 is one that fetch refuses/,
  );
});

Deno.test("bad UPSTREAM_CREDENTIALS stops start-up without printing the secret", async () => {
  const output = await failedStart({
    env: { UPSTREAM_CREDENTIALS: '{"docker.io": {"username": "me", "password": "hunter2"' },
  });
  assertMatch(output, /UPSTREAM_CREDENTIALS: invalid JSON/);
  assert(!output.includes("hunter2"), output);
});

Deno.test("an unknown flag stops start-up with a usage hint", async () => {
  const output = await failedStart({ extraArgs: ["--colour", "blue"] });
  assertMatch(output, /unknown flag --colour \(see --help\)/);
});

Deno.test("unreachable storage or a taken port stops start-up with one line, exit 1", async () => {
  const s3 = await failedStart({
    storageArgs: [
      "s3",
      "--bucket",
      "cache",
      "--endpoint",
      "http://127.0.0.1:9",
      "--access-key",
      "k",
      "--secret-key",
      "s",
    ],
  }, 1);
  assertMatch(s3, /oci-registry: cannot open storage: .*cache/);
  await using running = await startMirror({});
  const taken = await failedStart({ port: running.port }, 1);
  assertMatch(taken, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${running.port}: `));
});

Deno.test("accept_invalid_certs: a self-signed HTTPS upstream works only where it is set", async () => {
  await using up = await startUpstream({ tls: true });
  const image = await pushImage(up, "library/tls", "1", buildImage());
  await using mirror = await startMirror({
    upstreams: [
      { namespace: NS, host: up.host, accept_invalid_certs: true },
      { namespace: "strict.test", host: up.host },
    ],
  });
  await using dest = await tempDir();
  await skopeoPullDir({ host: mirror.host }, `${NS}/library/tls`, "1", dest.join("image"));
  for (const blob of [image.config, ...image.layers]) {
    assertEquals(await sha256File(dest.join("image", blob.sha256)), blob.sha256);
  }
  const strict = await mirror.fetch(`/v2/strict.test/library/tls/manifests/1`);
  assertEquals(strict.status, 503);
  const body = await strict.json();
  assertMatch(body.errors[0].message, /certificate|TLS|tls/);
});

Deno.test("clients cannot make the mirror call private addresses it was not configured for", async () => {
  // A bare TCP listener on loopback counts every connection anyone makes to it.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let connections = 0;
  const accepting = (async () => {
    for await (const connection of listener) {
      connections++;
      connection.close();
    }
  })();
  const target = `127.0.0.1:${listener.addr.port}`;
  try {
    await using guarded = await startMirror({});
    const refused = await guarded.fetch(`/v2/library/internal/manifests/1?ns=${target}`);
    assertEquals(refused.status, 403);
    const error = (await refused.json()).errors[0];
    assertEquals(error.code, "DENIED");
    assertMatch(error.message, /not allowed: loopback/);
    assertEquals(connections, 0, "the private address was never contacted");

    await using open = await startMirror({ extraArgs: ["--allow-private-upstreams"] });
    const attempted = await open.fetch(`/v2/library/internal/manifests/1?ns=${target}`);
    assertEquals(attempted.status, 503); // contacted: the listener hangs up at once
    await attempted.body?.cancel();
    assert(connections > 0, "with --allow-private-upstreams the mirror does connect");
  } finally {
    listener.close();
    await accepting.catch(() => {});
  }
});

Deno.test("--listen unix:PATH serves the API on a Unix socket", async () => {
  await using dir = await tempDir();
  const socket = dir.join("oci.sock");
  await using mirror = await startMirror({
    extraArgs: ["--listen", `unix:${socket}`],
    noWait: true,
  });
  for (let i = 0; i < 100; i++) {
    try {
      await Deno.stat(socket);
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const client = Deno.createHttpClient({ proxy: { transport: "unix", path: socket } });
  try {
    const response = await fetch("http://localhost/v2/", { client });
    assertEquals(response.status, 200);
    assertEquals(await response.json(), {});
  } finally {
    client.close();
  }
  assert(mirror.running());
});

Deno.test("without --allow-ffi blobs are hashed in place: slower, the same bytes and checks", async () => {
  await using up = await startUpstream();
  const blob = await pushRandomBlob(up, "library/noffi", (3 << 20) + 4321);
  const permissions = [
    "--allow-net",
    "--allow-read",
    "--allow-write",
    "--allow-env",
    "--allow-sys",
  ];
  for (
    const [flags, says] of [[[...permissions, "--allow-ffi"], /libcrypto thread/], [
      permissions,
      /no FFI: blob hashing in place/,
    ]] as const
  ) {
    await using mirror = await startMirror({
      command: [Deno.execPath(), "run", ...flags, "src/main.ts"],
      upstreams: [{ namespace: NS, host: up.host, tls: false }],
    });
    assertMatch(mirror.logs(), says);
    const response = await mirror.fetch(`/v2/library/noffi/blobs/${blob.digest}?ns=${NS}`);
    assertEquals(response.status, 200);
    const bytes = new Uint8Array(await response.arrayBuffer());
    assertEquals(digestOf(bytes), blob.digest);
  }
  assertEquals(await up.countBlobGets(blob.digest), 2, "one download per mirror");
});

Deno.test("--log-format json: every line of a real process is a JSON object; the access log has its fields", async () => {
  await using mirror = await startMirror({ extraArgs: ["--log-format", "json"] });
  const response = await mirror.fetch("/v2/registry.test/library/x/manifests/1?ns=registry.test");
  await response.body?.cancel();
  const entry = await mirror.waitForLog(/"msg":"request".*manifests/);
  const lines = mirror.logs().split("\n").filter((line) => line.trim() !== "");
  for (const line of lines) assert(line.startsWith("{"), `not JSON: ${line}`);
  const parsed = lines.map((line) => JSON.parse(line));
  assert(parsed.every((line) => typeof line.time === "string" && typeof line.level === "string"));
  assertMatch(parsed[0].msg, /^oci-registry .* listening on/);
  const request = JSON.parse(entry);
  assertEquals(request.method, "GET");
  assertEquals(request.target, "/v2/registry.test/library/x/manifests/1?ns=registry.test");
  assertEquals(request.status, response.status);
  assertEquals(request.namespace, "registry.test");
  assertEquals(typeof request.durationMs, "number");
});

Deno.test("a namespace hosted only by the upstream file's hosted: takes pushes, is never fetched upstream", async () => {
  await using up = await startUpstream();
  // The same repository upstream: a mirrored read of it would show in the upstream's log.
  await pushImage(up, "myorg/app", "1", buildImage());
  const yaml = `upstreams:\n  - namespace: ${NS}\n    host: ${up.host}\n    tls: false\n` +
    "hosted: [myorg]\n";
  await using mirror = await startMirror({
    upstreamConfigYaml: yaml,
    defaultNamespace: NS,
    extraArgs: ["--allow-anonymous-push"],
  });
  assertMatch(mirror.logs(), /hosted: myorg/);
  await up.sync();
  const before = up.requests().length;

  const image = await pushImage(
    new RegistryClient({ url: mirror.url }),
    "myorg/app",
    "2",
    buildImage(),
  );
  const manifest = await mirror.fetch("/v2/myorg/app/manifests/2");
  assertEquals(manifest.status, 200);
  assertEquals(digestOf(new Uint8Array(await manifest.arrayBuffer())), image.digest);
  // Tag 1 exists upstream only: a hosted name answers from its own store, so it is unknown here.
  const upstreamOnly = await mirror.fetch("/v2/myorg/app/manifests/1");
  assertEquals(upstreamOnly.status, 404);
  assertEquals((await upstreamOnly.json()).errors[0].code, "MANIFEST_UNKNOWN");
  // Other names of the same default namespace are still mirrored from it.
  await pushImage(up, "library/mirrored", "1", buildImage());
  const mirrored = await mirror.fetch("/v2/library/mirrored/manifests/1");
  assertEquals(mirrored.status, 200);
  await mirrored.body?.cancel();

  await up.sync();
  const asked = up.requests().slice(before).map((r) => `${r.method} ${r.path}`);
  assert(asked.some((line) => line.includes("/library/mirrored/")), asked.join("\n"));
  assertEquals(asked.filter((line) => line.includes("myorg")), [], "myorg never asked upstream");
});

Deno.test("a hosted: name in the file that cannot be hosted stops start-up naming file and key", async () => {
  const output = await failedStart({
    upstreamConfigYaml:
      `upstreams:\n  - namespace: ghcr.io\n    host: ghcr.io\nhosted: [ghcr.io]\n`,
  });
  assertMatch(
    output,
    /upstreams\.yaml: key "hosted": "ghcr\.io" is also a configured upstream namespace/,
  );
  const component = await failedStart({ upstreamConfigYaml: "hosted: [My-Org]\n" });
  assertMatch(
    component,
    /upstreams\.yaml: key "hosted": "My-Org" is not a repository name component/,
  );
});
