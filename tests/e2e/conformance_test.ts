/**
 * The official OCI distribution-spec conformance suites (prebuilt in ../shared/conformance/)
 * against a hosted namespace of a real mirror process, on the filesystem and on S3 (s3rver):
 *
 *   - the 2026 suite with every API and data set on: OCI_VERSION=1.1+dev turns on the optional
 *     APIs (upload cancel, digest headers, ?tag= on manifest PUT) and OCI_DATA_SPARSE=true the
 *     one data set that is off by default (which needs --sparse-manifests);
 *   - v1.1.1 with all four workflows (pull, push, content discovery, content management).
 *
 * Each must report 0 failures; on failure the failing checks are printed by name.
 */
import { assert, assertEquals } from "../support/assert.ts";
import {
  buildImage,
  descriptorOf,
  makeBlob,
  pushBlob,
  pushImage,
  pushManifest,
} from "../support/images.ts";
import { startMirror } from "../support/mirror.ts";
import { startUpstream } from "../support/upstream.ts";
import { s3MirrorArgs, startS3rver } from "../support/s3rver.ts";
import { REPO_ROOT, run, tempDir } from "../support/tools.ts";

const SUITES = `${REPO_ROOT}/../shared/conformance`;
const HOSTED = ["--hosted", "myorg", "--sparse-manifests", "--allow-anonymous-push"];

interface Summary {
  passed: number;
  failed: number;
  failures: string[];
  output: string;
}

/** The 2026 suite: its summary block (`Pass....: N`, `FAIL....: N`) and failed check names. */
async function run2026(host: string, env: Record<string, string> = {}): Promise<Summary> {
  await using dir = await tempDir("oci-conformance-");
  const result = await run(`${SUITES}/oci-conformance`, [], {
    cwd: dir.path,
    timeoutMs: 600_000,
    env: {
      OCI_REGISTRY: host,
      OCI_TLS: "disabled",
      OCI_VERSION: "1.1+dev",
      OCI_DATA_SPARSE: "true",
      OCI_REPO1: "myorg/repo1",
      OCI_REPO2: "myorg/repo2",
      OCI_RESULTS_DIR: "./results",
      ...env,
    },
  });
  const output = result.stdout + result.stderr;
  const count = (label: string) => {
    const match = new RegExp(`^\\s*${label}\\.+:\\s*(\\d+)\\s*$`, "m").exec(output);
    return match ? Number(match[1]) : NaN;
  };
  const failures = [...output.matchAll(/msg="failed test" name="([^"]+)"/g)].map((m) => m[1]);
  return {
    passed: count("Pass"),
    failed: count("FAIL") + count("Error"),
    failures: [...new Set(failures)],
    output,
  };
}

/** v1.1.1 (ginkgo): `N Passed | N Failed | ...` and the `[FAIL] ...` lines. */
async function runV111(
  url: string,
  env?: Record<string, string>,
  extra: Record<string, string> = {},
): Promise<Summary> {
  await using dir = await tempDir("oci-conformance-v111-");
  const result = await run(`${SUITES}/oci-conformance-v1.1.1`, ["-ginkgo.no-color"], {
    cwd: dir.path,
    timeoutMs: 300_000,
    env: env ? { OCI_ROOT_URL: url, OCI_REPORT_DIR: ".", ...env } : {
      OCI_ROOT_URL: url,
      OCI_NAMESPACE: "myorg/myrepo",
      OCI_CROSSMOUNT_NAMESPACE: "myorg/other",
      OCI_AUTOMATIC_CROSSMOUNT: "1",
      OCI_TEST_PULL: "1",
      OCI_TEST_PUSH: "1",
      OCI_TEST_CONTENT_DISCOVERY: "1",
      OCI_TEST_CONTENT_MANAGEMENT: "1",
      OCI_REPORT_DIR: ".",
      ...extra,
    },
  });
  const output = result.stdout + result.stderr;
  const match = /(\d+) Passed \| (\d+) Failed/.exec(output);
  const failures = [...output.matchAll(/^\s*\[FAIL\] (.+)$/gm)].map((m) => m[1]);
  return {
    passed: match ? Number(match[1]) : NaN,
    failed: match ? Number(match[2]) : NaN,
    failures,
    output,
  };
}

function assertClean(suite: string, summary: Summary, atLeast: number): void {
  if (summary.failed !== 0 || !(summary.passed >= atLeast)) {
    console.error(`${suite}: failing checks:\n  ${summary.failures.join("\n  ")}`);
    console.error(summary.output.slice(-4000));
  }
  if (Deno.env.get("CONFORMANCE_VERBOSE")) console.error(summary.output);
  // The figures, in the test output (CI logs, closing notes).
  console.log(`${suite}: ${summary.passed} passed, ${summary.failed} failed`);
  assertEquals(summary.failed, 0, `${suite} failures: ${summary.failures.join(", ")}`);
  assert(summary.passed >= atLeast, `${suite} passed only ${summary.passed} checks`);
}

Deno.test("OCI conformance (2026 suite, everything on, and v1.1.1): filesystem", async () => {
  await using mirror = await startMirror({ extraArgs: HOSTED });
  // 1030 checks pass here when every API and data set is on.
  assertClean("oci-conformance", await run2026(mirror.host), 1000);
  assertClean("oci-conformance-v1.1.1", await runV111(mirror.url), 75);
});

Deno.test("OCI conformance with authentication on (OCI_USERNAME/OCI_PASSWORD): filesystem", async () => {
  await using dir = await tempDir("conformance-auth-");
  const line = await run("htpasswd", ["-Bbn", "conformance", "c0nf-pw"], { check: true });
  await Deno.writeTextFile(dir.join("htpasswd"), line.stdout);
  await Deno.writeTextFile(
    dir.join("auth.yaml"),
    "htpasswd: htpasswd\nrules:\n  - namespace: myorg\n    users: [conformance]\n" +
      "    actions: [pull, push, delete]\n",
  );
  await using mirror = await startMirror({
    extraArgs: ["--hosted", "myorg", "--sparse-manifests", "--auth-config", dir.join("auth.yaml")],
  });
  const creds = { OCI_USERNAME: "conformance", OCI_PASSWORD: "c0nf-pw" };
  // Anonymous clients get nothing: the suites really run logged in.
  assertEquals((await mirror.fetch("/v2/myorg/repo1/tags/list")).status, 401);
  assertClean("oci-conformance", await run2026(mirror.host, creds), 1000);
  // With auth, a mount without `from` is a plain upload (it would read any repository's blob):
  // the registry does not do automatic content discovery, which the suite allows.
  assertClean(
    "oci-conformance-v1.1.1",
    await runV111(mirror.url, undefined, { ...creds, OCI_AUTOMATIC_CROSSMOUNT: "0" }),
    75,
  );
});

Deno.test("OCI conformance (2026 suite, everything on, and v1.1.1): S3", async () => {
  const s3 = await startS3rver("conformance");
  try {
    await using mirror = await startMirror({ extraArgs: HOSTED, storageArgs: s3MirrorArgs(s3) });
    assertClean("oci-conformance", await run2026(mirror.host), 1000);
    assertClean("oci-conformance-v1.1.1", await runV111(mirror.url), 75);
  } finally {
    await s3.stop();
  }
});

Deno.test("OCI conformance through the mirror: v1.1.1 pull workflow, 2026 suite read-only", async () => {
  await using up = await startUpstream();
  const image = await pushImage(up, "library/conformance", "1", buildImage({ layers: 2 }));
  // A signature of the image, listed the way a registry without a referrers API lists it: an
  // index under the fallback tag sha256-<hex> (distribution 2.8.2 has no referrers API).
  const empty = makeBlob("application/vnd.oci.empty.v1+json", new TextEncoder().encode("{}"));
  await pushBlob(up, "library/conformance", empty);
  const signature = makeBlob(
    "application/vnd.oci.image.manifest.v1+json",
    new TextEncoder().encode(JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      artifactType: "application/vnd.example.signature",
      config: descriptorOf(empty),
      layers: [descriptorOf(empty)],
      subject: descriptorOf(image.manifest),
    })),
  );
  await pushManifest(up, "library/conformance", signature.digest, signature);
  const fallback = makeBlob(
    "application/vnd.oci.image.index.v1+json",
    new TextEncoder().encode(JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [descriptorOf(signature, { artifactType: "application/vnd.example.signature" })],
    })),
  );
  await pushManifest(up, "library/conformance", `sha256-${image.manifest.sha256}`, fallback);
  await using mirror = await startMirror({
    upstreams: [{ namespace: "registry.test", host: up.host, tls: false }],
  });
  const repo = "registry.test/library/conformance";
  assertClean(
    "oci-conformance-v1.1.1 pull through the mirror",
    await runV111(mirror.url, {
      OCI_NAMESPACE: repo,
      OCI_TEST_PULL: "1",
      OCI_TAG_NAME: "1",
      OCI_MANIFEST_DIGEST: image.digest,
      OCI_BLOB_DIGEST: image.layers[0].digest,
    }),
    10,
  );
  assertClean(
    "oci-conformance read-only through the mirror",
    await run2026(mirror.host, {
      OCI_VERSION: "1.1",
      OCI_DATA_SPARSE: "false",
      OCI_API_PUSH: "false",
      OCI_REPO1: repo,
      OCI_REPO2: repo,
      OCI_RO_DATA_TAGS: "1",
      OCI_RO_DATA_MANIFESTS: image.digest,
      OCI_RO_DATA_BLOBS: [image.config.digest, ...image.layers.map((l) => l.digest)].join(" "),
      OCI_RO_DATA_REFERRERS: image.digest,
    }),
    1,
  );
  const referrers = await mirror.fetch(
    `/v2/${repo}/referrers/${image.digest}?artifactType=application/vnd.example.signature`,
  );
  assertEquals(referrers.headers.get("oci-filters-applied"), "artifactType");
  assertEquals((await referrers.json()).manifests.map((d: { digest: string }) => d.digest), [
    signature.digest,
  ]);
});
