/**
 * Mirrored namespaces as a Registry: the same interfaces hosted repositories answer through,
 * so that the HTTP layer serves both alike. Reads go to the pull-through Mirror; every write
 * is UNSUPPORTED (405): a mirror is read-only, pushes go to the upstream.
 *
 * A name is the registry first, then the repository there (`docker.io/library/alpine`), as
 * oci/namespace.ts resolves it from `?ns=`, a host prefix or the default namespace.
 *
 * The cached content keeps the mirror's own layout in storage (shared with hosted content by
 * digest): the mirror owns its freshness records (tag links with their confirmation time,
 * upstream links), which hosted repositories have no use for.
 */
import { RegistryError } from "../oci/errors.ts";
import type { ResolvedName } from "../oci/namespace.ts";
import type { Registry } from "../registry/registry.ts";
import type { Mirror } from "./mirror.ts";

/** The registry name of a resolved mirrored name, as MirroredRegistry takes it. */
export function mirroredName(name: ResolvedName): string {
  return `${name.namespace}/${name.repository}`;
}

function split(name: string): ResolvedName {
  const slash = name.indexOf("/");
  return { namespace: name.slice(0, slash), repository: name.slice(slash + 1) };
}

export class MirroredRegistry implements Registry {
  readonly #mirror: Mirror;

  constructor(mirror: Mirror) {
    this.#mirror = mirror;
  }

  readonly blobs: Registry["blobs"] = {
    get: async (name, digest, request) => {
      const { namespace, repository } = split(name);
      return { digest, ...await this.#mirror.getBlob(namespace, repository, digest, request) };
    },
    delete: (name) => Promise.reject(readOnly(name)),
    mount: (name) => Promise.reject(readOnly(name)),
  };

  readonly manifests: Registry["manifests"] = {
    get: (name, reference, accept = []) => {
      const { namespace, repository } = split(name);
      return this.#mirror.getManifest(namespace, repository, reference, accept);
    },
    put: (name) => Promise.reject(readOnly(name)),
    delete: (name) => Promise.reject(readOnly(name)),
  };

  readonly tags: Registry["tags"] = {
    list: (name, options) => {
      const { namespace, repository } = split(name);
      return this.#mirror.listTags(namespace, repository, options);
    },
  };

  readonly uploads: Registry["uploads"] = {
    start: (name) => Promise.reject(readOnly(name)),
    status: (name) => Promise.reject(readOnly(name)),
    append: (name) => Promise.reject(readOnly(name)),
    finish: (name) => Promise.reject(readOnly(name)),
    cancel: (name) => Promise.reject(readOnly(name)),
    expire: () => Promise.resolve(0),
  };

  readonly referrers: Registry["referrers"] = {
    list: (name, digest, artifactType) => {
      const { namespace, repository } = split(name);
      return this.#mirror.listReferrers(namespace, repository, digest, artifactType);
    },
  };

  /** Mirrored registries are not listed: their repositories are upstream's. */
  catalog(): Promise<{ items: string[] }> {
    return Promise.resolve({ items: [] });
  }
}

function readOnly(name: string): RegistryError {
  return new RegistryError(
    "UNSUPPORTED",
    `${
      split(name).namespace
    } is a mirrored registry: it is read-only here; push to the upstream instead`,
  );
}
