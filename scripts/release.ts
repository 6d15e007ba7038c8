/**
 * `deno task release`: the release artefacts, as the release workflow
 * (.github/workflows/release.yml) builds them on a machine with internet access (deno compile
 * downloads its runtime base for each target; these machines cannot):
 *
 *   dist/oci-registry-<target>[.exe]   one executable per target in TARGETS
 *   dist/SHA256SUMS                    their checksums, as `sha256sum -c` reads them
 *
 * Every executable gets exactly the permission and V8 flags of deno.json's `compile` task (the
 * Dockerfile's too; tests/chart_test.ts checks), and `--version` names the commit: the script
 * writes it into src/runtime/build_info.ts for the build and puts the file back afterwards.
 *
 *   deno task release                 every target
 *   deno task release --target T...   some of them
 */
import { createHash } from "node:crypto";
import { parseArgs } from "node:util";

/** What is released: deno compile's --target names. */
export const TARGETS = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
  "x86_64-pc-windows-msvc",
] as const;

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/** The flags of the compile task (permissions, V8 flags), without its -o and entry point. */
export function compileFlags(task: string): string[] {
  const words = task.split(/\s+/).filter(Boolean);
  const flags: string[] = [];
  for (let i = 0; i < words.length; i++) {
    if (words[i] === "-o") i++; // its output path
    else if (words[i].startsWith("--")) flags.push(words[i]);
  }
  return flags;
}

/** The line of src/runtime/build_info.ts that a release build replaces with the commit. */
export const COMMIT_LINE = /^export const COMMIT: string \| undefined = undefined;$/m;

export function artefactName(target: string): string {
  return `oci-registry-${target}${target.includes("windows") ? ".exe" : ""}`;
}

async function run(command: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(command, { args, cwd: ROOT, stderr: "inherit" }).output();
  if (!out.success) throw new Error(`${command} ${args.join(" ")} failed (${out.code})`);
  return new TextDecoder().decode(out.stdout).trim();
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: { target: { type: "string", multiple: true } },
  });
  const targets = values.target?.length ? values.target : [...TARGETS];
  for (const target of targets) {
    if (!(TARGETS as readonly string[]).includes(target)) {
      console.error(`release: unknown target ${target}; one of ${TARGETS.join(", ")}`);
      return 2;
    }
  }
  const task = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`)).tasks.compile as string;
  const flags = compileFlags(task);
  const commit = await run("git", ["rev-parse", "--short=12", "HEAD"]);
  const buildInfo = `${ROOT}/src/runtime/build_info.ts`;
  const original = await Deno.readTextFile(buildInfo);
  await Deno.mkdir(`${ROOT}/dist`, { recursive: true });
  const sums: string[] = [];
  try {
    await Deno.writeTextFile(
      buildInfo,
      original.replace(
        COMMIT_LINE,
        `export const COMMIT: string | undefined = ${JSON.stringify(commit)};`,
      ),
    );
    for (const target of targets) {
      const output = `dist/${artefactName(target)}`;
      console.error(`release: ${output}`);
      await run(Deno.execPath(), [
        "compile",
        ...flags,
        "--target",
        target,
        "-o",
        output,
        "src/main.ts",
      ]);
      const hash = createHash("sha256").update(await Deno.readFile(`${ROOT}/${output}`)).digest(
        "hex",
      );
      sums.push(`${hash}  ${artefactName(target)}`);
    }
  } finally {
    await Deno.writeTextFile(buildInfo, original);
  }
  await Deno.writeTextFile(`${ROOT}/dist/SHA256SUMS`, sums.join("\n") + "\n");
  console.error(`release: ${targets.length} executable(s) of commit ${commit}, dist/SHA256SUMS`);
  return 0;
}

if (import.meta.main) Deno.exit(await main());
