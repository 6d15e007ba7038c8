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
import { startMirror } from "../support/mirror.ts";
import { s3MirrorArgs, startS3rver } from "../support/s3rver.ts";
import { REPO_ROOT, run, tempDir } from "../support/tools.ts";

const SUITES = `${REPO_ROOT}/../shared/conformance`;
const HOSTED = ["--hosted", "myorg", "--sparse-manifests"];

interface Summary {
  passed: number;
  failed: number;
  failures: string[];
  output: string;
}

/** The 2026 suite: its summary block (`Pass....: N`, `FAIL....: N`) and failed check names. */
async function run2026(host: string): Promise<Summary> {
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
async function runV111(url: string): Promise<Summary> {
  await using dir = await tempDir("oci-conformance-v111-");
  const result = await run(`${SUITES}/oci-conformance-v1.1.1`, ["-ginkgo.no-color"], {
    cwd: dir.path,
    timeoutMs: 300_000,
    env: {
      OCI_ROOT_URL: url,
      OCI_NAMESPACE: "myorg/myrepo",
      OCI_CROSSMOUNT_NAMESPACE: "myorg/other",
      OCI_AUTOMATIC_CROSSMOUNT: "1",
      OCI_TEST_PULL: "1",
      OCI_TEST_PUSH: "1",
      OCI_TEST_CONTENT_DISCOVERY: "1",
      OCI_TEST_CONTENT_MANAGEMENT: "1",
      OCI_REPORT_DIR: ".",
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
  assertEquals(summary.failed, 0, `${suite} failures: ${summary.failures.join(", ")}`);
  assert(summary.passed >= atLeast, `${suite} passed only ${summary.passed} checks`);
}

Deno.test("OCI conformance (2026 suite, everything on, and v1.1.1): filesystem", async () => {
  await using mirror = await startMirror({ extraArgs: HOSTED });
  // 1030 checks pass here when every API and data set is on.
  assertClean("oci-conformance", await run2026(mirror.host), 1000);
  assertClean("oci-conformance-v1.1.1", await runV111(mirror.url), 75);
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
