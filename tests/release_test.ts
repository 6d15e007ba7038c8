/**
 * The release workflow and scripts/release.ts, checked against the project so that a release
 * cannot drift from what CI tests: the tag trigger, the full test suite first, every compile
 * target with checksums, the multi-arch image from the Dockerfile, the chart package, and one
 * Deno version everywhere.
 */
import { load as parseYaml } from "js-yaml";
import { assert, assertEquals, assertMatch } from "./support/assert.ts";
import { REPO_ROOT } from "./support/tools.ts";
import { artefactName, COMMIT_LINE, compileFlags, TARGETS } from "../scripts/release.ts";
import { versionLine } from "../src/runtime/build_info.ts";

interface Step {
  run?: string;
  uses?: string;
}
interface Job {
  needs?: string | string[];
  steps: Step[];
}

const workflow = parseYaml(
  Deno.readTextFileSync(`${REPO_ROOT}/.github/workflows/release.yml`),
) as { on: { push: { tags: string[] } }; env: Record<string, string>; jobs: Record<string, Job> };
const tasks = JSON.parse(Deno.readTextFileSync(`${REPO_ROOT}/deno.json`)).tasks;
const scripts = (job: string) => workflow.jobs[job].steps.map((s) => s.run ?? "").join("\n");

Deno.test("release workflow: a v* tag, the whole suite first, then every artefact", () => {
  assertEquals(workflow.on.push.tags, ["v*"]);
  assertMatch(scripts("test"), /bash \.ci\/run/);
  for (const job of ["binaries", "image", "chart"]) {
    assertEquals(workflow.jobs[job].needs, "test", `${job} waits for the tests`);
  }
});

Deno.test("release workflow: binaries for every target, with SHA256SUMS, built by deno task release", () => {
  assertEquals(tasks.release, "deno run -A scripts/release.ts");
  const binaries = scripts("binaries");
  assertMatch(binaries, /npx -y deno@\$\{DENO_VERSION\} task release/);
  assertMatch(binaries, /gh release upload .* dist\/oci-registry-\* dist\/SHA256SUMS/);
  assertMatch(
    binaries,
    new RegExp(`\\./dist/${artefactName("x86_64-unknown-linux-gnu")} --version`),
  );
  assertEquals(
    TARGETS.map(artefactName),
    [
      "oci-registry-x86_64-unknown-linux-gnu",
      "oci-registry-aarch64-unknown-linux-gnu",
      "oci-registry-x86_64-apple-darwin",
      "oci-registry-aarch64-apple-darwin",
      "oci-registry-x86_64-pc-windows-msvc.exe",
    ],
  );
  // Exactly the compile task's permissions and V8 flags, which the Dockerfile and image share.
  const flags = compileFlags(tasks.compile);
  assert(
    flags.includes("--allow-net") && flags.some((f) => f.startsWith("--v8-flags=")),
    flags.join(" "),
  );
  assert(!flags.includes("-o") && !flags.some((f) => f.endsWith(".ts")), flags.join(" "));
});

Deno.test("release workflow: a multi-arch image from the Dockerfile, and the chart package", () => {
  const image = scripts("image");
  assertMatch(image, /docker buildx build --platform linux\/amd64,linux\/arm64/);
  assertMatch(image, /--build-arg VERSION="\$version"/);
  assertMatch(image, /--push \./);
  const chart = scripts("chart");
  assertMatch(chart, /helm lint --strict charts\/oci-registry/);
  assertMatch(chart, /helm package charts\/oci-registry/);
});

Deno.test("one Deno version: the workflow, the Dockerfile, CI and the README", () => {
  const version = workflow.env.DENO_VERSION;
  assertEquals(version, "2.9.6");
  const dockerfile = Deno.readTextFileSync(`${REPO_ROOT}/Dockerfile`);
  assertEquals(/^ARG DENO_VERSION=(\S+)/m.exec(dockerfile)?.[1], version);
  assertMatch(
    Deno.readTextFileSync(`${REPO_ROOT}/.ci/run`),
    new RegExp(`deno@${version.replaceAll(".", "\\.")}`),
  );
  assertMatch(
    Deno.readTextFileSync(`${REPO_ROOT}/README.md`),
    new RegExp(`npx -y deno@${version.replaceAll(".", "\\.")} task start`),
  );
});

Deno.test("--version: a checkout says it is a development build; a release stamps its commit", () => {
  assertMatch(versionLine(), /^oci-registry \d+\.\d+\.\d+ \(development build\)$/);
  const source = Deno.readTextFileSync(`${REPO_ROOT}/src/runtime/build_info.ts`);
  assertEquals(
    source.match(new RegExp(COMMIT_LINE.source, "gm"))?.length,
    1,
    "the line release.ts replaces",
  );
});
