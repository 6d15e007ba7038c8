/**
 * Hosted namespaces (first path segments whose repositories live here, never fetched upstream),
 * from `--hosted` / HOSTED and from the upstream file's `hosted:` key. The two combine: the
 * hosted namespaces are the union of both, so a deployment can add one with the flag to those
 * its file names. Every name obeys the same rules wherever it came from, and a mistake names the
 * flag or the file and key.
 */
import { ConfigError, type UpstreamRegistry } from "./upstreams.ts";

/** A repository name component (OCI distribution spec), lower case. */
const COMPONENT = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;

/**
 * Checks names as one source gives them (`where`: "--hosted" or `file: key "hosted"`) and
 * returns them without repeats, in order.
 */
export function checkHostedNames(
  names: string[],
  where: string,
  defaultNamespace: string,
): string[] {
  for (const name of names) {
    if (!COMPONENT.test(name)) {
      throw new ConfigError(`${where}: "${name}" is not a repository name component`);
    }
    if (name === defaultNamespace) {
      throw new ConfigError(`${where}: "${name}" is the default namespace, which is mirrored`);
    }
  }
  return [...new Set(names)];
}

/**
 * The hosted namespaces of the process: the flag's (already checked by the command line) and
 * the file's, union, flag's first. A hosted name must not also be a configured upstream: the
 * hosted name would win and the upstream would never be mirrored.
 */
export function combineHosted(
  fromFlag: string[],
  file: { source: string; names: string[] } | undefined,
  defaultNamespace: string,
  upstreams: UpstreamRegistry,
): string[] {
  const fileKey = file && `${file.source}: key "hosted"`;
  const fromFile = file ? checkHostedNames(file.names, fileKey!, defaultNamespace) : [];
  const configured = new Set(upstreams.configured().map((u) => u.namespace));
  for (const [names, where] of [[fromFlag, "--hosted"], [fromFile, fileKey]] as const) {
    for (const name of names) {
      if (configured.has(name)) {
        throw new ConfigError(
          `${where}: "${name}" is also a configured upstream namespace; hosted names are never mirrored, so choose one`,
        );
      }
    }
  }
  return [...new Set([...fromFlag, ...fromFile])];
}
