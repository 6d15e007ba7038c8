/**
 * What `--version` says about the build. A checkout runs as a development build; the release
 * script (scripts/release.ts) writes the commit here before it compiles, and puts this file
 * back afterwards.
 */
export const VERSION = "0.1.0";
export const COMMIT: string | undefined = undefined;

/** `oci-registry 0.1.0 (commit 1a2b3c4)`, or `(development build)` from a checkout. */
export function versionLine(): string {
  return `oci-registry ${VERSION} (${COMMIT ? `commit ${COMMIT}` : "development build"})`;
}
