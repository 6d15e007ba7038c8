/**
 * Makes this machine ready for the end-to-end tests; run by `deno task test` before `deno test`.
 *
 * - Checks the real components exist (docker-registry, skopeo, containerd, podman, umoci,
 *   buildah, dockerd and docker, htpasswd, nginx, openssl, CA certificates); when some are
 *   missing and we are root, installs their Debian packages with apt-get (without starting
 *   their services).
 * - Pins the reserved test names (registry.test, ...) to 127.0.0.1 in /etc/hosts, so a client
 *   that bypasses the mirror fails fast instead of reaching anything else.
 *
 * Idempotent, and takes milliseconds when everything is already in place.
 */

/** file -> Debian package providing it */
export const REQUIRED_BINARIES: Record<string, string> = {
  "/usr/bin/docker-registry": "docker-registry",
  "/usr/bin/skopeo": "skopeo",
  "/usr/bin/containerd": "containerd",
  "/usr/bin/ctr": "containerd",
  "/usr/bin/podman": "podman",
  "/usr/bin/umoci": "umoci",
  "/usr/bin/buildah": "buildah",
  "/usr/sbin/dockerd": "docker.io",
  "/usr/bin/docker": "docker.io",
  "/usr/bin/htpasswd": "apache2-utils",
  "/usr/sbin/nginx": "nginx-light",
  "/usr/bin/openssl": "openssl",
  // Copied into the scratch image (scripts/image.ts).
  "/etc/ssl/certs/ca-certificates.crt": "ca-certificates",
};

export const TEST_HOSTNAMES = ["registry.test", "registry2.test", "private.test", "token.test"];

const HOSTS_FILE = "/etc/hosts";
const POLICY_RC_D = "/usr/sbin/policy-rc.d";

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

function isRoot(): boolean {
  try {
    return Deno.uid() === 0;
  } catch {
    return false;
  }
}

async function sh(cmd: string, args: string[], env: Record<string, string> = {}) {
  const status = await new Deno.Command(cmd, {
    args,
    env,
    stdin: "null",
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!status.success) throw new Error(`${cmd} ${args.join(" ")} failed with ${status.code}`);
}

export function missingPackages(): string[] {
  const missing = new Set<string>();
  for (const [binary, pkg] of Object.entries(REQUIRED_BINARIES)) {
    if (!exists(binary)) missing.add(pkg);
  }
  return [...missing];
}

export async function installPackages(packages: string[]): Promise<void> {
  if (packages.length === 0) return;
  if (!isRoot()) {
    console.error(
      `setup: missing packages ${packages.join(" ")}; not root, so not installing them ` +
        `(run: sudo apt-get install -y ${packages.join(" ")}). End-to-end tests will fail.`,
    );
    return;
  }
  console.error(`setup: installing ${packages.join(" ")} with apt-get`);
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  // Package scripts must not start system-wide nginx/containerd/docker daemons: tests run their
  // own.
  let madePolicy = false;
  if (!exists(POLICY_RC_D)) {
    Deno.writeTextFileSync(POLICY_RC_D, "#!/bin/sh\nexit 101\n", { mode: 0o755 });
    madePolicy = true;
  }
  try {
    await sh("apt-get", ["update", "-q"], env);
    await sh("apt-get", ["install", "-y", "-q", ...packages], env);
  } finally {
    if (madePolicy) Deno.removeSync(POLICY_RC_D);
  }
}

/** Adds the missing test names to /etc/hosts as 127.0.0.1 (returns the names added). */
export function pinHosts(file = HOSTS_FILE): string[] {
  let text = "";
  try {
    text = Deno.readTextFileSync(file);
  } catch { /* no hosts file yet */ }
  const pinned = new Set<string>();
  for (const line of text.split("\n")) {
    const fields = line.replace(/#.*/, "").trim().split(/\s+/);
    if (fields[0] === "127.0.0.1") { for (const name of fields.slice(1)) pinned.add(name); }
  }
  const missing = TEST_HOSTNAMES.filter((name) => !pinned.has(name));
  if (missing.length === 0) return [];
  const prefix = text.length === 0 || text.endsWith("\n") ? "" : "\n";
  try {
    Deno.writeTextFileSync(file, `${prefix}127.0.0.1 ${missing.join(" ")}\n`, { append: true });
  } catch (e) {
    console.error(`setup: cannot pin ${missing.join(" ")} in ${file}: ${(e as Error).message}`);
    return [];
  }
  return missing;
}

if (import.meta.main) {
  const started = Date.now();
  await installPackages(missingPackages());
  const stillMissing = missingPackages();
  if (stillMissing.length > 0) {
    console.error(`setup: still missing: ${stillMissing.join(" ")}`);
  }
  const added = pinHosts();
  if (added.length > 0) console.error(`setup: pinned ${added.join(" ")} to 127.0.0.1`);
  console.error(`setup: ready in ${Date.now() - started} ms`);
}
