/**
 * Which upstream registry a request is for, from the three ways clients say it:
 *   1. `?ns=registry.k8s.io` (containerd, on every request);
 *   2. a first path segment that looks like a registry host followed by the repository
 *      (`/v2/registry.k8s.io/pause/...`: cri-o, podman, skopeo mirrors); with `ns` too, the
 *      prefix is stripped and `ns` decides (containerd with override_path);
 *   3. otherwise the default namespace (Docker's registry-mirrors: plain `/v2/library/x`), where
 *      a single-segment Docker Hub name gets `library/`.
 */
import { RegistryError } from "./errors.ts";
import { assertRepository, isRegistryHost } from "./reference.ts";

export interface ResolvedName {
  /** The registry the client means, e.g. "docker.io". */
  namespace: string;
  /** The repository inside that registry, e.g. "library/alpine". */
  repository: string;
}

/** A first segment that names a registry host rather than a repository component. */
function looksLikeHost(segment: string): boolean {
  return (segment.includes(".") || segment.includes(":") || segment === "localhost") &&
    isRegistryHost(segment);
}

export function resolveName(
  pathName: string,
  nsParam: string | null,
  defaultNamespace: string,
): ResolvedName {
  const segments = pathName.split("/");
  let repository = pathName;
  let namespace: string | undefined;
  if (segments.length >= 2 && looksLikeHost(segments[0])) {
    namespace = segments[0];
    repository = segments.slice(1).join("/");
  }
  if (nsParam !== null && nsParam !== "") {
    if (!isRegistryHost(nsParam)) {
      throw new RegistryError("NAME_INVALID", `invalid ns parameter: ${JSON.stringify(nsParam)}`);
    }
    namespace = nsParam;
  }
  namespace = (namespace ?? defaultNamespace).toLowerCase();
  assertRepository(repository);
  if (namespace === "docker.io" && !repository.includes("/")) {
    repository = `library/${repository}`;
  }
  return { namespace, repository };
}

/**
 * The hosted repository a path names: its first segment is one of `hosted` and no `?ns=`
 * points elsewhere. Null for mirrored names; NAME_INVALID for a hosted name that is not a
 * valid OCI repository name (traversal such as `myorg/../x` included).
 */
export function hostedName(
  pathName: string,
  nsParam: string | null,
  hosted: ReadonlySet<string>,
): string | null {
  if (hosted.size === 0 || (nsParam !== null && nsParam !== "")) return null;
  const first = pathName.split("/", 1)[0].toLowerCase();
  if (!hosted.has(first)) return null;
  assertRepository(pathName);
  return pathName;
}
