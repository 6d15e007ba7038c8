/** The OCI distribution grammar for repository names, tags and references. */
import { isDigest } from "./digest.ts";
import { RegistryError } from "./errors.ts";

const NAME_COMPONENT = "[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*";
const REPOSITORY_NAME = new RegExp(`^${NAME_COMPONENT}(?:/${NAME_COMPONENT})*$`);
const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
/** Registry host names as clients write them: `docker.io`, `localhost:5000`, `10.0.0.1:5000`. */
const REGISTRY_HOST =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]{1,5})?$/;

/** Longest repository name we accept (distribution allows 255 including the registry). */
const MAX_NAME_LENGTH = 255;

export function isValidRepository(name: string): boolean {
  return name.length <= MAX_NAME_LENGTH && REPOSITORY_NAME.test(name);
}

export function assertRepository(name: string): void {
  if (!isValidRepository(name)) {
    throw new RegistryError("NAME_INVALID", `invalid repository name: ${JSON.stringify(name)}`);
  }
}

export function isTag(reference: string): boolean {
  return TAG.test(reference);
}

export function isRegistryHost(value: string): boolean {
  return value.length <= 253 && REGISTRY_HOST.test(value) && validPort(value);
}

/** A port, when there is one, is a TCP port: `registry.test:99999` is no host (nor is `:0`). */
function validPort(host: string): boolean {
  const port = /:(\d+)$/.exec(host);
  return port === null || (Number(port[1]) >= 1 && Number(port[1]) <= 65535);
}

/** An upstream address: a registry host name, or a bracketed IPv6 literal, with an optional port. */
export function isUpstreamHost(value: string): boolean {
  return isRegistryHost(value) ||
    (/^\[[0-9a-fA-F:.]+\](?::[0-9]{1,5})?$/.test(value) && validPort(value));
}

/**
 * A manifest reference is a tag or a digest (tags cannot contain ":", so a ":" means digest);
 * anything else is DIGEST_INVALID or MANIFEST_INVALID, both 400. For reads (`unknown`), a
 * string that cannot be a tag names no manifest: 404 MANIFEST_UNKNOWN, as the OCI conformance
 * suite expects of `GET /v2/<name>/manifests/.INVALID_MANIFEST_NAME`.
 */
export function assertManifestReference(reference: string, options: { read?: boolean } = {}) {
  if (isTag(reference) || isDigest(reference)) return;
  if (reference.includes(":")) {
    throw new RegistryError("DIGEST_INVALID", `invalid digest: ${JSON.stringify(reference)}`);
  }
  if (options.read) {
    throw new RegistryError(
      "MANIFEST_UNKNOWN",
      `no manifest is tagged ${JSON.stringify(reference)}`,
    );
  }
  throw new RegistryError("MANIFEST_INVALID", `invalid tag: ${JSON.stringify(reference)}`);
}

/**
 * `registry.k8s.io/pause:3.9`, `alpine` (docker.io/library/alpine:latest),
 * `ghcr.io/org/app@sha256:...`: the registry, repository and reference of an image name as
 * `docker pull` reads it.
 */
export function parseImageName(
  name: string,
): { registry: string; repository: string; reference: string } {
  let rest = name.trim();
  let registry = "docker.io";
  const slash = rest.indexOf("/");
  const first = slash < 0 ? "" : rest.slice(0, slash);
  if (first && (first.includes(".") || first.includes(":") || first === "localhost")) {
    if (!isRegistryHost(first)) throw invalidImage(name);
    registry = first;
    rest = rest.slice(slash + 1);
  }
  let reference = "latest";
  const at = rest.indexOf("@");
  if (at >= 0) {
    reference = rest.slice(at + 1);
    rest = rest.slice(0, at).replace(/:[^/]*$/, ""); // a tag before a digest is ignored
  } else {
    const colon = rest.lastIndexOf(":");
    if (colon > rest.lastIndexOf("/")) {
      reference = rest.slice(colon + 1);
      rest = rest.slice(0, colon);
    }
  }
  if (registry === "docker.io" && !rest.includes("/")) rest = `library/${rest}`;
  try {
    assertRepository(rest);
    assertManifestReference(reference);
  } catch {
    throw invalidImage(name);
  }
  return { registry, repository: rest, reference };
}

function invalidImage(name: string): RegistryError {
  return new RegistryError("NAME_INVALID", `not an image name: ${JSON.stringify(name)}`);
}
