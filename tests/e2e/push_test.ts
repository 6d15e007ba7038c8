/**
 * Pushing to a hosted namespace of a real mirror process: bad input to every write endpoint
 * gets the spec's OCI error and status, and leaves nothing behind in storage (no blob, no
 * manifest, no tag, no upload session); writes to mirrored names stay 405.
 */
import { createHash, randomBytes } from "node:crypto";
import { assert, assertEquals } from "../support/assert.ts";
import { type Mirror, startMirror } from "../support/mirror.ts";
import { rawRequest } from "../support/raw_http.ts";

const REPO = "myorg/app";

function sha256(bytes: Uint8Array | string): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

async function errorOf(response: Response): Promise<{ status: number; code?: string }> {
  const text = await response.text();
  try {
    return { status: response.status, code: JSON.parse(text).errors?.[0]?.code };
  } catch {
    return { status: response.status };
  }
}

/** Every file under the store's root, except the temp dir (relative paths, sorted). */
async function storedFiles(root: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (dir: string, prefix: string) => {
    for await (const entry of Deno.readDir(dir)) {
      if (prefix === "" && entry.name.startsWith(".")) continue;
      const path = `${prefix}${entry.name}`;
      if (entry.isDirectory) await walk(`${dir}/${entry.name}`, `${path}/`);
      else found.push(path);
    }
  };
  await walk(root, "");
  return found.sort();
}

/** Sends `request`, closes the sending side (the client hangs up) and reads the answer. */
async function halfSent(port: number, request: string): Promise<{ status: number; body: string }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode(request));
    await conn.closeWrite();
    const text = await new Response(conn.readable).text();
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
    return { status, body: text.slice(text.indexOf("\r\n\r\n") + 4) };
  } finally {
    try {
      conn.close();
    } catch { /* closed with its readable */ }
  }
}

async function upload(mirror: Mirror, repo = REPO): Promise<string> {
  const response = await mirror.fetch(`/v2/${repo}/blobs/uploads/`, { method: "POST" });
  assertEquals(response.status, 202);
  await response.body?.cancel();
  return response.headers.get("location")!;
}

async function pushBlob(mirror: Mirror, bytes: string): Promise<string> {
  const digest = sha256(bytes);
  const response = await mirror.fetch(`/v2/${REPO}/blobs/uploads/?digest=${digest}`, {
    method: "POST",
    body: bytes,
  });
  assertEquals(response.status, 201, await response.text());
  return digest;
}

Deno.test("bad pushes get OCI errors and store nothing", async () => {
  await using mirror = await startMirror({
    extraArgs: ["--hosted", "myorg", "--allow-anonymous-push"],
  });
  const root = mirror.root!;
  const before = await storedFiles(root);
  const expect = async (
    what: string,
    response: Promise<Response>,
    status: number,
    code: string,
  ) => assertEquals(await errorOf(await response), { status, code }, what);

  // Blobs: a digest that does not match, on every way of finishing an upload.
  await expect(
    "monolithic POST with the wrong digest",
    mirror.fetch(`/v2/${REPO}/blobs/uploads/?digest=${sha256("other")}`, {
      method: "POST",
      body: "content",
    }),
    400,
    "DIGEST_INVALID",
  );
  let location = await upload(mirror);
  await expect(
    "PUT with the wrong digest",
    mirror.fetch(`${location}?digest=${sha256("other")}`, { method: "PUT", body: "content" }),
    400,
    "DIGEST_INVALID",
  );
  await expect(
    "a sha512 digest that does not match",
    mirror.fetch(`${location}?digest=sha512:${"0".repeat(128)}`, { method: "PUT", body: "x" }),
    400,
    "DIGEST_INVALID",
  );
  await expect(
    "a digest that is no digest",
    mirror.fetch(`${location}?digest=sha256:xyz`, { method: "PUT", body: "x" }),
    400,
    "DIGEST_INVALID",
  );
  await expect(
    "PUT without ?digest=",
    mirror.fetch(location, { method: "PUT", body: "x" }),
    400,
    "DIGEST_INVALID",
  );

  // A failed PUT leaves the session as it was (a client may retry); the client ends it.
  const ended = await mirror.fetch(location, { method: "DELETE" });
  assertEquals(ended.status, 204);
  await ended.body?.cancel();

  // Chunks: the first one says it starts at 5; then a valid one, then one that overlaps.
  location = await upload(mirror);
  const outOfOrder = await mirror.fetch(location, {
    method: "PATCH",
    body: "abc",
    headers: { "content-range": "5-7" },
  });
  assertEquals(outOfOrder.headers.get("range"), "0-0");
  assertEquals(await errorOf(outOfOrder), { status: 416, code: "RANGE_INVALID" });
  const first = await mirror.fetch(location, {
    method: "PATCH",
    body: "abc",
    headers: { "content-range": "0-2" },
  });
  assertEquals(first.status, 202);
  assertEquals(first.headers.get("range"), "0-2");
  await first.body?.cancel();
  await expect(
    "an overlapping chunk",
    mirror.fetch(location, { method: "PATCH", body: "cde", headers: { "content-range": "2-4" } }),
    416,
    "RANGE_INVALID",
  );
  await expect(
    "a Content-Range that disagrees with Content-Length",
    mirror.fetch(location, { method: "PATCH", body: "de", headers: { "content-range": "3-9" } }),
    416,
    "RANGE_INVALID",
  );
  const status = await mirror.fetch(location);
  assertEquals(status.status, 204);
  assertEquals(status.headers.get("range"), "0-2", "the bad chunks added nothing");
  await status.body?.cancel();
  const cancelled = await mirror.fetch(location, { method: "DELETE" });
  assertEquals(cancelled.status, 204);
  await cancelled.body?.cancel();
  await expect("a cancelled upload", mirror.fetch(location), 404, "BLOB_UPLOAD_UNKNOWN");

  // A body shorter than its Content-Length: the client hangs up half-way.
  location = await upload(mirror);
  const short = await halfSent(
    mirror.port,
    `PUT ${location}?digest=${sha256("0123456789")} HTTP/1.1\r\nHost: x\r\n` +
      `Content-Length: 10\r\nConnection: close\r\n\r\n01234`,
  );
  assertEquals(short.status, 400, "a body that broke off is the client's error");
  assertEquals(JSON.parse(short.body).errors[0].code, "BLOB_UPLOAD_INVALID", short.body);
  await expect(
    "the blob of a short body",
    mirror.fetch(`/v2/${REPO}/blobs/${sha256("0123456789")}`),
    404,
    "BLOB_UNKNOWN",
  );
  await mirror.fetch(location, { method: "DELETE" }).then((r) => r.body?.cancel());

  // Upload ids: unknown, malformed, traversal, and another repository's.
  const unknown = `/v2/${REPO}/blobs/uploads/00000000-0000-4000-8000-000000000000`;
  await expect("an unknown upload id", mirror.fetch(unknown), 404, "BLOB_UPLOAD_UNKNOWN");
  await expect(
    "PATCH to an unknown upload",
    mirror.fetch(unknown, { method: "PATCH", body: "x" }),
    404,
    "BLOB_UPLOAD_UNKNOWN",
  );
  await expect(
    "an upload id that is a path",
    mirror.fetch(`/v2/${REPO}/blobs/uploads/..%2f..%2fblobs`, { method: "PATCH", body: "x" }),
    404,
    "BLOB_UPLOAD_UNKNOWN",
  );
  location = await upload(mirror, "myorg/other");
  await expect(
    "another repository's upload",
    mirror.fetch(location.replace("myorg/other", REPO)),
    404,
    "BLOB_UPLOAD_UNKNOWN",
  );
  await mirror.fetch(location, { method: "DELETE" }).then((r) => r.body?.cancel());

  // Names: traversal and invalid names are NAME_INVALID, before anything is read.
  for (const name of ["myorg/..%2f..%2fetc", "myorg/UPPER", "myorg/a//b"]) {
    await expect(
      `name ${name}`,
      mirror.fetch(`/v2/${name}/blobs/uploads/`, { method: "POST" }),
      400,
      "NAME_INVALID",
    );
  }
  // fetch() would resolve the dots itself: send them as they are.
  const dots = await rawRequest(
    mirror.port,
    "POST /v2/myorg/../myorg/x/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n" +
      "Connection: close\r\n\r\n",
  );
  assertEquals([dots.status, JSON.parse(dots.body).errors[0].code], [400, "NAME_INVALID"]);

  // Manifests: malformed, oversized, unsupported, or naming content that is not here.
  const put = (
    reference: string,
    body: string,
    type = "application/vnd.oci.image.manifest.v1+json",
  ) =>
    mirror.fetch(`/v2/${REPO}/manifests/${reference}`, {
      method: "PUT",
      body,
      headers: { "content-type": type },
    });
  await expect("malformed JSON", put("v1", "{not json"), 400, "MANIFEST_INVALID");
  await expect("an empty body", put("v1", ""), 400, "MANIFEST_INVALID");
  await expect("a JSON array", put("v1", "[]"), 400, "MANIFEST_INVALID");
  await expect(
    "schema version 1",
    put("v1", JSON.stringify({ schemaVersion: 1, config: {}, layers: [] })),
    400,
    "MANIFEST_INVALID",
  );
  await expect(
    "a big manifest (over 4 MiB)",
    put("v1", JSON.stringify({ schemaVersion: 2, pad: "x".repeat(4 << 20) })),
    413,
    "MANIFEST_INVALID",
  );
  const missing = JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: sha256("c"), size: 1 },
    layers: [],
  });
  await expect("a missing config blob", put("v1", missing), 404, "MANIFEST_BLOB_UNKNOWN");
  const config = await pushBlob(mirror, "{}");
  const withLayer = JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: config, size: 2 },
    layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", digest: sha256("l"), size: 1 }],
  });
  await expect("a missing layer", put("v1", withLayer), 404, "MANIFEST_BLOB_UNKNOWN");
  const index = JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.index.v1+json",
    manifests: [{
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      digest: sha256("m"),
      size: 1,
    }],
  });
  await expect(
    "an index with a missing child",
    put("v1", index, "application/vnd.oci.image.index.v1+json"),
    404,
    "MANIFEST_BLOB_UNKNOWN",
  );
  await expect(
    "Content-Type against mediaType",
    put("v1", withLayer, "application/vnd.oci.image.index.v1+json"),
    400,
    "MANIFEST_INVALID",
  );
  await expect("a digest that does not match", put(sha256("x"), missing), 400, "DIGEST_INVALID");
  await expect("an invalid tag", put("-bad", missing), 400, "MANIFEST_INVALID");
  await expect(
    "an unknown manifest",
    mirror.fetch(`/v2/${REPO}/manifests/v1`),
    404,
    "MANIFEST_UNKNOWN",
  );
  await expect(
    "DELETE of an unknown manifest",
    mirror.fetch(`/v2/${REPO}/manifests/${sha256("x")}`, { method: "DELETE" }),
    404,
    "MANIFEST_UNKNOWN",
  );
  await expect(
    "DELETE of an unknown blob",
    mirror.fetch(`/v2/${REPO}/blobs/${sha256("x")}`, { method: "DELETE" }),
    404,
    "BLOB_UNKNOWN",
  );
  await expect(
    "tags of no repository",
    mirror.fetch(`/v2/myorg/none/tags/list`),
    404,
    "NAME_UNKNOWN",
  );
  await expect("a bad n", mirror.fetch(`/v2/${REPO}/tags/list?n=-1`), 400, "BAD_REQUEST");
  await expect(
    "referrers of no digest",
    mirror.fetch(`/v2/${REPO}/referrers/latest`),
    400,
    "DIGEST_INVALID",
  );

  // Mirrored names stay read-only.
  await expect(
    "a push to a mirrored name",
    mirror.fetch(`/v2/library/alpine/blobs/uploads/`, { method: "POST" }),
    405,
    "UNSUPPORTED",
  );

  // Nothing but the one config blob (and its link) was stored; no session is left.
  const config_ = config.slice("sha256:".length);
  assertEquals(
    (await storedFiles(root)).filter((f) => !before.includes(f)),
    [
      `blobs/sha256/${config_.slice(0, 2)}/${config_}`,
      `repositories/${REPO}/_blobs/sha256/${config_}`,
    ],
  );
});

Deno.test("a push in chunks, pulled back byte-exact, listed, then deleted", async () => {
  await using mirror = await startMirror({
    extraArgs: ["--hosted", "myorg", "--allow-anonymous-push"],
  });
  const bytes = new Uint8Array(randomBytes(300_000));
  const digest = sha256(bytes);
  const location = await upload(mirror);
  for (let at = 0; at < bytes.length; at += 100_000) {
    const chunk = bytes.subarray(at, at + 100_000);
    const r = await mirror.fetch(location, {
      method: "PATCH",
      body: chunk,
      headers: { "content-range": `${at}-${at + chunk.length - 1}` },
    });
    assertEquals(r.status, 202);
    await r.body?.cancel();
  }
  const done = await mirror.fetch(`${location}?digest=${digest}`, { method: "PUT" });
  assertEquals(done.status, 201);
  assertEquals(done.headers.get("location"), `/v2/${REPO}/blobs/${digest}`);
  await done.body?.cancel();
  const pulled = new Uint8Array(
    await (await mirror.fetch(`/v2/${REPO}/blobs/${digest}`)).arrayBuffer(),
  );
  assertEquals(sha256(pulled), digest);
  const ranged = await mirror.fetch(`/v2/${REPO}/blobs/${digest}`, {
    headers: { range: "bytes=10-19" },
  });
  assertEquals(ranged.status, 206);
  assertEquals(new Uint8Array(await ranged.arrayBuffer()), bytes.subarray(10, 20));

  const config = await pushBlob(mirror, "{}");
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: config, size: 2 },
    layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", digest, size: bytes.length }],
  });
  for (const tag of ["b", "a", "c"]) {
    const r = await mirror.fetch(`/v2/${REPO}/manifests/${tag}`, {
      method: "PUT",
      body: manifest,
      headers: { "content-type": "application/vnd.oci.image.manifest.v1+json" },
    });
    assertEquals(r.status, 201);
    assertEquals(r.headers.get("docker-content-digest"), sha256(manifest));
    await r.body?.cancel();
  }
  const page = await mirror.fetch(`/v2/${REPO}/tags/list?n=2`);
  assertEquals(await page.json(), { name: REPO, tags: ["a", "b"] });
  assertEquals(page.headers.get("link"), `</v2/${REPO}/tags/list?n=2&last=b>; rel="next"`);
  const rest = await mirror.fetch(`/v2/${REPO}/tags/list?n=2&last=b`);
  assertEquals(await rest.json(), { name: REPO, tags: ["c"] });
  assertEquals(rest.headers.get("link"), null);
  const catalog = await mirror.fetch(`/v2/_catalog`);
  assertEquals(await catalog.json(), { repositories: [REPO] });

  const deleted = await mirror.fetch(`/v2/${REPO}/manifests/${sha256(manifest)}`, {
    method: "DELETE",
  });
  assertEquals(deleted.status, 202);
  await deleted.body?.cancel();
  const tags = await mirror.fetch(`/v2/${REPO}/tags/list`);
  assertEquals(await tags.json(), { name: REPO, tags: [] }, "the tags went with the manifest");
});

Deno.test("an abandoned upload expires and leaves nothing behind (--upload-expiry)", async () => {
  await using mirror = await startMirror({
    extraArgs: ["--hosted", "myorg", "--upload-expiry", "1s", "--allow-anonymous-push"],
  });
  const root = mirror.root!;
  const location = await upload(mirror);
  const chunk = await mirror.fetch(location, { method: "PATCH", body: "half of a blob" });
  assertEquals(chunk.status, 202);
  await chunk.body?.cancel();
  assert((await storedFiles(root)).some((f) => f.startsWith("uploads/")), "the session is stored");
  // The sweep runs every expiry period (here 1 s): within a few seconds nothing is left.
  const deadline = Date.now() + 10_000;
  while ((await storedFiles(root)).some((f) => f.startsWith("uploads/"))) {
    assert(Date.now() < deadline, "the expired session was removed");
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  assertEquals(await errorOf(await mirror.fetch(location)), {
    status: 404,
    code: "BLOB_UPLOAD_UNKNOWN",
  });
});
