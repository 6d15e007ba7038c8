/**
 * Builds the scratch container image (Containerfile.scratch) with buildah, offline:
 *
 *   deno task image                       # tags localhost/oci-registry:VERSION
 *   deno task image --tag NAME -- --root R --runroot RR --storage-driver vfs
 *
 * (everything after `--` goes to buildah before `bud`: its global storage flags).
 *
 * The image holds exactly:
 * - the Deno runtime that runs this script (`Deno.execPath()`, the npm package's binary) as
 *   /deno, and the `deno bundle` of src/main.ts as /oci-registry.js;
 * - the shared libraries `ldd` lists for that binary, at the paths ldd gives, and the dynamic
 *   loader; plus libcrypto, which the program loads itself (FFI, for hashing blob downloads off
 *   the JavaScript thread; without it the program works, only slower under load); `ldd` of
 *   libcrypto must list nothing the runtime does not already need;
 * - the build machine's CA certificates (/etc/ssl/certs/ca-certificates.crt; the entrypoint
 *   tells Deno to trust that file, so an operator can mount their own bundle there);
 * - /etc/passwd and /etc/group naming the non-root user 65532, and an empty /data it owns.
 *
 * `stageImage()` lays that out as a build context; tests use it to know the intended file list.
 */
import { VERSION } from "../src/main.ts";

export const REPO_ROOT: string = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
export const CONTAINERFILE = `${REPO_ROOT}/Containerfile.scratch`;
/** The libraries the program opens itself (Deno.dlopen), besides what the runtime links. */
export const DLOPENED = ["libcrypto.so.3"];
export const NONROOT_UID = 65532;

export interface StagedImage {
  /** The build context: `rootfs/` (copied to /) and `data/` (the empty /data). */
  context: string;
  /** Every path the image's layers hold (files and directories), absolute, sorted. */
  paths: string[];
  /** The shared libraries and loader, as absolute paths inside the image. */
  libraries: string[];
  /** Image files whose bytes equal a file on this machine: image path -> host path. */
  sources: Map<string, string>;
}

async function output(cmd: string, args: string[], cwd = REPO_ROOT): Promise<string> {
  const result = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder();
  if (!result.success) {
    throw new Error(
      `${cmd} ${args.join(" ")} exited ${result.code}\n${text.decode(result.stderr)}`,
    );
  }
  return text.decode(result.stdout);
}

/** `ldd FILE` as the absolute paths it resolved (the vDSO is not a file, so it is left out). */
export async function sharedLibraries(file: string): Promise<string[]> {
  const libraries: string[] = [];
  for (const line of (await output("ldd", [file])).split("\n")) {
    const resolved = /=>\s+(\/\S+)\s+\(0x/.exec(line) ?? /^\s+(\/\S+)\s+\(0x/.exec(line);
    if (resolved) libraries.push(resolved[1]);
    else if (/=>\s+not found/.test(line)) throw new Error(`ldd ${file}: ${line.trim()}`);
  }
  return libraries;
}

/** The libraries to ship: the runtime's, then the dlopen()ed ones next to its libc. */
export async function imageLibraries(deno: string): Promise<string[]> {
  const linked = await sharedLibraries(deno);
  const libc = linked.find((path) => /\/libc\.so\.6$/.test(path));
  if (!libc) throw new Error(`ldd ${deno} lists no libc.so.6`);
  const libraries = [...linked];
  for (const name of DLOPENED) {
    const path = `${libc.slice(0, libc.lastIndexOf("/"))}/${name}`;
    const needs = (await sharedLibraries(path)).filter((lib) => !linked.includes(lib));
    if (needs.length > 0) throw new Error(`${path} needs more than the runtime: ${needs}`);
    libraries.push(path);
  }
  return libraries;
}

/** Lays out the build context in `context` (created; must not exist or be empty). */
export async function stageImage(
  context: string,
  opts: { deno?: string; bundle: string },
): Promise<StagedImage> {
  const deno = opts.deno ?? Deno.execPath();
  const rootfs = `${context}/rootfs`;
  await Deno.mkdir(rootfs, { recursive: true });
  await Deno.mkdir(`${context}/data`);
  const sources = new Map<string, string>();
  const libraries = await imageLibraries(deno);
  sources.set("/deno", deno);
  sources.set("/oci-registry.js", opts.bundle);
  for (const library of libraries) sources.set(library, library);
  sources.set("/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs/ca-certificates.crt");
  for (const [inImage, onHost] of sources) {
    const target = `${rootfs}${inImage}`;
    await Deno.mkdir(target.slice(0, target.lastIndexOf("/")), { recursive: true });
    await Deno.copyFile(await Deno.realPath(onHost), target); // dereferences symlinks
    const executable = inImage === "/deno" || libraries.includes(inImage);
    await Deno.chmod(target, executable ? 0o755 : 0o644);
  }
  const nonroot = `nonroot:x:${NONROOT_UID}:${NONROOT_UID}:nonroot:/data:/sbin/nologin\n`;
  await Deno.writeTextFile(
    `${rootfs}/etc/passwd`,
    `root:x:0:0:root:/root:/sbin/nologin\n${nonroot}`,
  );
  await Deno.writeTextFile(`${rootfs}/etc/group`, `root:x:0:\nnonroot:x:${NONROOT_UID}:\n`);
  for (const file of ["passwd", "group"]) await Deno.chmod(`${rootfs}/etc/${file}`, 0o644);

  const paths = new Set<string>(["/data"]);
  for (const file of [...sources.keys(), "/etc/passwd", "/etc/group"]) {
    const parts = file.split("/");
    for (let i = 2; i <= parts.length; i++) paths.add(parts.slice(0, i).join("/"));
  }
  return { context, paths: [...paths].sort(), libraries, sources };
}

/** `deno bundle` of src/main.ts into `file` (what `deno task bundle` does). */
export async function bundle(file: string): Promise<void> {
  await output(Deno.execPath(), ["bundle", "--platform", "deno", "-o", file, "src/main.ts"]);
}

/** The commit the image is built from ("unknown" outside a git checkout). */
export async function revision(): Promise<string> {
  try {
    return (await output("git", ["rev-parse", "HEAD"])).trim();
  } catch {
    return "unknown";
  }
}

/**
 * `buildah [globalFlags] bud` of Containerfile.scratch over a staged context; returns the commit
 * written into the revision label.
 */
export async function buildImage(
  staged: StagedImage,
  tag: string,
  globalFlags: string[] = [],
): Promise<string> {
  const commit = await revision();
  await output("buildah", [
    ...globalFlags,
    "bud",
    "--file",
    CONTAINERFILE,
    "--build-arg",
    `VERSION=${VERSION}`,
    "--build-arg",
    `REVISION=${commit}`,
    "--tag",
    tag,
    staged.context,
  ]);
  return commit;
}

if (import.meta.main) {
  const args = [...Deno.args];
  const dashes = args.indexOf("--");
  const globalFlags = dashes >= 0 ? args.splice(dashes).slice(1) : [];
  let tag = `localhost/oci-registry:${VERSION}`;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--tag" && args[i + 1]) tag = args[++i];
    else {
      console.error("usage: deno task image [--tag NAME] [-- BUILDAH_GLOBAL_FLAGS...]");
      Deno.exit(2);
    }
  }
  const context = `${REPO_ROOT}/dist/image-context`;
  await Deno.remove(context, { recursive: true }).catch(() => {});
  await Deno.mkdir(`${REPO_ROOT}/dist`, { recursive: true });
  await bundle(`${REPO_ROOT}/dist/oci-registry.js`);
  const staged = await stageImage(context, { bundle: `${REPO_ROOT}/dist/oci-registry.js` });
  await buildImage(staged, tag, globalFlags);
  console.log(`built ${tag}: ${staged.paths.length} paths`);
}
