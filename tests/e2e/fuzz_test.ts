/**
 * One bounded fuzz run against the mirror as a process (real upstream: Debian's
 * docker-registry): a fixed number of random and mutated requests (methods, paths, names,
 * digests, headers, ranges, bodies, `?ns=` values), some over a raw socket for what fetch()
 * cannot send. The PRNG is seeded (FUZZ_SEED overrides, FUZZ_COUNT the count), so a failure
 * names the seed and the request and reproduces.
 *
 * It ends with: the process up and answering, every answer a success (2xx, 304, 307) or an OCI
 * JSON error with a 4xx/5xx status and never a 500, every 200 blob or manifest body hashing to
 * its digest, every blob and manifest under the storage root hashing to its name, and /metrics
 * still small.
 */
import { createHash } from "node:crypto";
import { assert, assertEquals } from "../support/assert.ts";
import { buildImage, pushImage } from "../support/images.ts";
import { startMirror } from "../support/mirror.ts";
import { rawRequest } from "../support/raw_http.ts";
import { startUpstream } from "../support/upstream.ts";

const NS = "registry.test";
const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 20261201);
const COUNT = Number(Deno.env.get("FUZZ_COUNT") ?? 3000);
const CONCURRENCY = 8;

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
function prng(seed: number) {
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(items: readonly T[]): T => items[int(items.length)];
  const chance = (p: number) => next() < p;
  return { next, int, pick, chance };
}
type Rng = ReturnType<typeof prng>;

const sha256 = (bytes: Uint8Array) => "sha256:" + createHash("sha256").update(bytes).digest("hex");

interface Case {
  what: string;
  method: string;
  target: string;
  headers: [string, string][];
  body?: Uint8Array<ArrayBuffer>;
  /** Sent over a raw socket (with a Host header of its own, or none). */
  raw?: string | Uint8Array;
  /**
   * A chunked body that is not valid chunked framing: Deno.serve then drops the connection
   * without any response, whatever the handler answered (measured on 2.9.6).
   */
  badChunks?: boolean;
}

interface Corpus {
  names: string[];
  tags: string[];
  blobs: string[];
  manifests: string[];
}

const SAFE_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-._/:";
const NASTY = [
  "%",
  "%zz",
  "%00",
  "%2f",
  "%2e%2e",
  "..",
  "//",
  "\\",
  "%FF",
  "%C3%28",
  "é",
  "😀",
  ";",
  "?",
  "&",
  "=",
  "@",
  "'",
  '"',
  "<",
  "*",
  "~",
  " ",
  "%20",
  "+",
  "\t",
  "$",
  "{",
  "|",
];

function mutate(rng: Rng, text: string): string {
  let out = text;
  const steps = 1 + rng.int(3);
  for (let i = 0; i < steps; i++) {
    const at = rng.int(out.length + 1);
    switch (rng.int(6)) {
      case 0: // delete a run
        out = out.slice(0, at) + out.slice(at + 1 + rng.int(4));
        break;
      case 1: // insert something nasty
        out = out.slice(0, at) + rng.pick(NASTY) + out.slice(at);
        break;
      case 2: // replace a character
        out = out.slice(0, at) + SAFE_CHARS[rng.int(SAFE_CHARS.length)] + out.slice(at + 1);
        break;
      case 3: // upper-case
        out = out.toUpperCase();
        break;
      case 4: // repeat a chunk
        out = out.slice(0, at) + out.slice(at, at + 8).repeat(1 + rng.int(40)) + out.slice(at);
        break;
      case 5: // truncate
        out = out.slice(0, at);
        break;
    }
  }
  return out;
}

function randomDigest(rng: Rng): string {
  const hex = Array.from({ length: 64 }, () => "0123456789abcdef"[rng.int(16)]).join("");
  return rng.pick([
    `sha256:${hex}`,
    `sha512:${hex}${hex}`,
    `sha256:${hex.slice(0, rng.int(64))}`,
    `md5:${hex.slice(0, 32)}`,
    `sha256:${hex.toUpperCase()}`,
    `sha256%3A${hex}`,
    `sha256:..%2f..%2f${hex.slice(6)}`,
  ]);
}

function nsValue(rng: Rng): string {
  return rng.pick([
    NS,
    NS.toUpperCase(),
    "docker.io",
    "quay.io",
    "fuzz.invalid",
    `r${rng.int(1000)}.invalid`,
    "localhost:6000",
    "127.0.0.1:1",
    "[::1]:5000",
    "",
    "%zz",
    "a b",
    "x".repeat(300),
    "registry.test:99999",
    "-bad-.test",
  ]);
}

function randomPath(rng: Rng, corpus: Corpus): string {
  const name = rng.chance(0.8) ? rng.pick(corpus.names) : mutate(rng, rng.pick(corpus.names));
  const kind = rng.pick(["manifests", "blobs", "tags", "blobs/uploads", "referrers", "nothing"]);
  let reference: string;
  switch (kind) {
    case "manifests":
      reference = rng.pick([
        ...corpus.tags,
        ...corpus.manifests,
        randomDigest(rng),
        mutate(rng, rng.pick(corpus.tags)),
        mutate(rng, rng.pick(corpus.manifests)),
      ]);
      break;
    case "blobs":
      reference = rng.pick([
        ...corpus.blobs,
        randomDigest(rng),
        mutate(rng, rng.pick(corpus.blobs)),
      ]);
      break;
    case "tags":
      reference = rng.pick(["list", "list", "lis", "list/x", ""]);
      break;
    default:
      reference = rng.pick(["", "x", randomDigest(rng)]);
  }
  let path = `/v2/${name}/${kind}/${reference}`;
  if (rng.chance(0.1)) path = mutate(rng, path);
  if (rng.chance(0.05)) path = rng.pick(["/", "/v2", "/v2/", "/metrics", "/v2/_catalog", "/x"]);
  const query: string[] = [];
  if (rng.chance(0.4)) query.push(`ns=${rng.chance(0.8) ? nsValue(rng) : mutate(rng, NS)}`);
  if (kind === "tags" && rng.chance(0.5)) {
    query.push(`n=${rng.pick(["1", "0", "-1", "x", "99999999999"])}`);
  }
  if (kind === "tags" && rng.chance(0.3)) {
    query.push(`last=${rng.pick(["1", "%zz", "a".repeat(200)])}`);
  }
  if (rng.chance(0.05)) query.push(mutate(rng, "digest=sha256:abc&x=1"));
  return query.length ? `${path}?${query.join("&")}` : path;
}

const MEDIA_TYPES = [
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.docker.distribution.manifest.v1+prettyjws",
  "*/*",
  "text/html",
  ";;;,,,",
  "application/json; q=0.5, */*; q=0.1",
];

function randomHeaders(rng: Rng, corpus: Corpus): [string, string][] {
  const headers: [string, string][] = [];
  if (rng.chance(0.3)) {
    headers.push([
      "range",
      rng.pick([
        "bytes=0-0",
        "bytes=0-99",
        "bytes=10-",
        "bytes=-5",
        "bytes=-0",
        "bytes=5-1",
        "bytes=999999999-",
        "bytes=0-99999999999999999999",
        "bytes=1-2,3-4",
        "bytes=",
        "bytes=-",
        "items=0-1",
        "bytes=abc",
        `bytes=${rng.int(5000)}-${rng.int(5000)}`,
      ]),
    ]);
  }
  if (rng.chance(0.4)) {
    const count = 1 + rng.int(3);
    headers.push(["accept", Array.from({ length: count }, () => rng.pick(MEDIA_TYPES)).join(", ")]);
  }
  if (rng.chance(0.1)) {
    headers.push(["if-none-match", rng.pick([`"${rng.pick(corpus.manifests)}"`, "*", "garbage"])]);
  }
  if (rng.chance(0.1)) {
    headers.push(["authorization", rng.pick(["Basic Zm9vOmJhcg==", "Bearer x", "Basic", "!!"])]);
  }
  if (rng.chance(0.1)) headers.push([`x-fuzz-${rng.int(100)}`, mutate(rng, "value")]);
  if (rng.chance(0.03)) headers.push(["x-large", "v".repeat(rng.int(40_000))]);
  return headers;
}

const METHODS = [
  "GET",
  "GET",
  "GET",
  "GET",
  "HEAD",
  "HEAD",
  "POST",
  "PUT",
  "PATCH",
  "DELETE",
  "OPTIONS",
  "BREW",
  "M-SEARCH",
  "PROPFIND",
];

function fetchCase(rng: Rng, corpus: Corpus, i: number): Case {
  const method = rng.pick(METHODS);
  const target = randomPath(rng, corpus);
  const headers = randomHeaders(rng, corpus);
  let body: Uint8Array<ArrayBuffer> | undefined;
  if (method !== "GET" && method !== "HEAD" && rng.chance(0.6)) {
    body = new Uint8Array(rng.int(rng.chance(0.1) ? 200_000 : 2_000));
    for (let b = 0; b < body.length; b += 97) body[b] = rng.int(256);
  }
  return { what: `#${i} fetch`, method, target, headers, body };
}

function rawCase(rng: Rng, corpus: Corpus, i: number): Case {
  const target = randomPath(rng, corpus);
  const method = rng.pick(["GET", "HEAD", "get", "Get", "FOO", "DELETE", "POST"]);
  const host = rng.pick([
    "127.0.0.1",
    "x/metrics#",
    "a b",
    "[",
    "a:b",
    "",
    "registry.test:5000",
    "%zz",
    "u@h",
    "h".repeat(300),
  ]);
  const extra = randomHeaders(rng, corpus).map(([k, v]) => `${k}: ${v}\r\n`).join("");
  const form = rng.int(6);
  const line = form === 0
    ? `${method} http://${rng.pick(["other.example", "a", "127.0.0.1:1"])}${target} HTTP/1.1`
    : form === 1
    ? `${method} ${target} HTTP/1.0`
    : `${method} ${target} HTTP/1.1`;
  let body = "";
  let framing = "";
  let badChunks = false;
  if (method === "POST" || method === "DELETE") {
    // Complete bodies only: a body shorter than its framing says is a half-sent request,
    // which the connection guard (src/http/) times out, not something to answer.
    body = rng.pick(["", "abc", "0\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n", "zz\r\n"]);
    const chunked = rng.chance(0.5) && body !== "" && body !== "abc";
    framing = chunked ? "Transfer-Encoding: chunked\r\n" : `Content-Length: ${body.length}\r\n`;
    badChunks = chunked && body === "zz\r\n";
  }
  const raw = `${line}\r\n${form === 2 ? "" : `Host: ${host}\r\n`}${extra}${framing}` +
    `Connection: close\r\n\r\n${body}`;
  return { what: `#${i} raw`, method, target, headers: [], raw, badChunks };
}

interface Answer {
  status: number;
  contentType: string | null;
  apiVersion: string | null;
  digestHeader: string | null;
  body: Uint8Array;
  contentRange: string | null;
}

async function send(base: string, port: number, c: Case): Promise<Answer | "refused by fetch"> {
  if (c.raw !== undefined) {
    const answer = await rawRequest(port, c.raw, { timeoutMs: 15_000 });
    return {
      status: answer.status,
      contentType: answer.headers.get("content-type"),
      apiVersion: answer.headers.get("docker-distribution-api-version"),
      digestHeader: answer.headers.get("docker-content-digest"),
      body: answer.headers.get("transfer-encoding") === "chunked"
        ? new Uint8Array() // framed: not checked byte for byte
        : answer.bodyBytes,
      contentRange: answer.headers.get("content-range"),
    };
  }
  let response: Response;
  try {
    response = await fetch(base + c.target, {
      method: c.method,
      headers: c.headers,
      body: c.body,
      redirect: "manual",
      signal: AbortSignal.timeout(30_000),
    });
  } catch (e) {
    // fetch refuses some inputs itself (header values, URLs): nothing reached the mirror.
    if (e instanceof TypeError && !/error sending request|connection/i.test(e.message)) {
      return "refused by fetch";
    }
    throw e;
  }
  return {
    status: response.status,
    contentType: response.headers.get("content-type"),
    apiVersion: response.headers.get("docker-distribution-api-version"),
    digestHeader: response.headers.get("docker-content-digest"),
    body: new Uint8Array(await response.arrayBuffer()),
    contentRange: response.headers.get("content-range"),
  };
}

/** Why `answer` breaks the contract, or undefined when it keeps it. */
function violation(c: Case, answer: Answer, corpus: Corpus): string | undefined {
  const { status } = answer;
  const head = c.method.toUpperCase() === "HEAD";
  if (status === 0) return c.badChunks ? undefined : "no response";
  if (status < 400) {
    if (![200, 206, 304, 307].includes(status)) return `unexpected success status ${status}`;
    // A 200 for a known blob or manifest carries exactly its bytes.
    if (status === 200 && !head && answer.digestHeader && c.method.toUpperCase() === "GET") {
      const known = corpus.blobs.includes(answer.digestHeader) ||
        corpus.manifests.includes(answer.digestHeader);
      if (known && sha256(answer.body) !== answer.digestHeader) {
        return `body does not hash to ${answer.digestHeader}`;
      }
    }
    return undefined;
  }
  if (status === 500) return "500";
  if (status > 599) return `status ${status}`;
  // Deno.serve's own rejection of a request it could not parse: a bare 400 that the handler
  // never saw (documented in src/http/server.ts). Only raw requests can produce one.
  if (c.raw !== undefined && status === 400 && answer.apiVersion === null && !answer.contentType) {
    return answer.body.byteLength === 0 ? undefined : "a bare 400 with a body";
  }
  if (answer.contentType !== "application/json") return `content-type ${answer.contentType}`;
  if (head) return answer.body.byteLength === 0 ? undefined : "HEAD with a body";
  try {
    const errors = JSON.parse(new TextDecoder().decode(answer.body)).errors;
    const ok = Array.isArray(errors) && errors.length > 0 &&
      errors.every((e) => typeof e.code === "string" && typeof e.message === "string");
    return ok ? undefined : "not an OCI error body";
  } catch {
    return "body is not JSON";
  }
}

async function* walk(dir: string): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) yield* walk(path);
    else if (entry.isFile) yield path;
  }
}

Deno.test(`fuzz: ${COUNT} random and mutated requests (seed ${SEED})`, async () => {
  await using up = await startUpstream({ auth: "none" });
  const oci = await pushImage(up, "library/fuzz", "1", buildImage({ format: "oci", layers: 2 }));
  const docker = await pushImage(
    up,
    "library/fuzz",
    "2",
    buildImage({ format: "docker", layers: 1, layerSize: 100_000 }),
  );
  await using mirror = await startMirror({
    upstreams: [{ namespace: NS, host: up.host, tls: false }],
    defaultNamespace: NS,
  });
  const corpus: Corpus = {
    names: ["library/fuzz", "fuzz", `${NS}/library/fuzz`, `${NS}/fuzz`, "library/missing"],
    tags: ["1", "2", "missing", "latest"],
    blobs: [oci, docker].flatMap((image) => [image.config, ...image.layers].map((b) => b.digest)),
    manifests: [oci.digest, docker.digest],
  };
  const rng = prng(SEED);
  const cases = Array.from(
    { length: COUNT },
    (_, i) => rng.chance(0.2) ? rawCase(rng, corpus, i) : fetchCase(rng, corpus, i),
  );
  const started = performance.now();
  const failures: string[] = [];
  const statuses = new Map<string, number>();
  let refused = 0;
  let bare400 = 0;
  let next = 0;
  const slowest: [number, Case][] = [];
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < cases.length) {
      const c = cases[next++];
      const sent = performance.now();
      const answer = await send(mirror.url, mirror.port, c);
      slowest.push([performance.now() - sent, c]);
      slowest.sort((a, b) => b[0] - a[0]).splice(5);
      if (answer === "refused by fetch") {
        refused++;
        continue;
      }
      statuses.set(String(answer.status), (statuses.get(String(answer.status)) ?? 0) + 1);
      if (c.raw !== undefined && answer.status === 400 && answer.apiVersion === null) bare400++;
      const problem = violation(c, answer, corpus);
      if (problem) {
        const request = c.raw !== undefined
          ? JSON.stringify(typeof c.raw === "string" ? c.raw.slice(0, 400) : "<bytes>")
          : `${c.method} ${c.target.slice(0, 400)} ${JSON.stringify(c.headers).slice(0, 300)}`;
        failures.push(
          `${c.what} ${problem}: ${request} -> ${answer.status} ${
            new TextDecoder().decode(answer.body.slice(0, 200))
          }`,
        );
      }
    }
  }));
  const seconds = (performance.now() - started) / 1000;
  console.log(
    `fuzz seed ${SEED}: ${COUNT} requests in ${seconds.toFixed(1)}s; statuses ${
      JSON.stringify(Object.fromEntries([...statuses].sort()))
    }; ${refused} refused by fetch itself; ${bare400} bare 400s from Deno.serve`,
  );
  console.log(
    "slowest:\n" +
      slowest.map(([ms, c]) =>
        `${ms.toFixed(0)}ms ${c.what} ${c.method} ${
          c.raw !== undefined ? JSON.stringify(String(c.raw).slice(0, 300)) : c.target.slice(0, 300)
        }`
      ).join("\n"),
  );
  assertEquals(failures, [], `seed ${SEED}:\n${failures.slice(0, 20).join("\n")}`);
  assert(!/internal error/.test(mirror.logs()), mirror.logs().slice(-4000));

  // The process is up and still serves a pull correctly.
  assert(mirror.running(), "mirror still running");
  const manifest = await mirror.fetch(`/v2/library/fuzz/manifests/1`, {
    headers: { accept: oci.mediaType },
  });
  assertEquals(manifest.status, 200);
  assertEquals(sha256(new Uint8Array(await manifest.arrayBuffer())), oci.digest);
  for (const blob of [oci.config, ...oci.layers, docker.config, ...docker.layers]) {
    const response = await mirror.fetch(`/v2/library/fuzz/blobs/${blob.digest}`);
    assertEquals(response.status, 200);
    assertEquals(sha256(new Uint8Array(await response.arrayBuffer())), blob.digest);
  }

  // Everything stored hashes to its name.
  let stored = 0;
  for (const kind of ["blobs", "manifests"]) {
    const dir = `${mirror.root}/${kind}`;
    try {
      await Deno.stat(dir);
    } catch {
      continue;
    }
    for await (const path of walk(dir)) {
      const [algorithm, , hex] = path.slice(dir.length + 1).split("/");
      assertEquals(sha256(await Deno.readFile(path)), `${algorithm}:${hex}`, path);
      stored++;
    }
  }
  assert(stored >= corpus.blobs.length + 1, `${stored} stored objects`);

  // Labels stayed bounded whatever the requests were.
  const metrics = await (await mirror.fetch("/metrics")).text();
  const series = metrics.split("\n").filter((line) => line && !line.startsWith("#"));
  // Bounded by methods x endpoint kinds x statuses; hosted repositories added three endpoint
  // kinds (uploads, referrers, catalog), hence more room than the 150 this started with.
  assert(series.length < 220, `${series.length} series:\n${metrics}`);
});
