/**
 * What a mirror is willing to fetch: per namespace, repository and tag patterns an operator
 * allows or excludes, and whether namespaces nobody configured are mirrored at all
 * (`--upstream-policy`). A request outside them is refused before storage or upstream is
 * asked, with 404 (as if the content did not exist) or 403, as configured.
 *
 * Patterns are globs: `*` stands for any run of characters within one path segment, `**` for
 * any run across segments, `?` for one character. Tags have no segments, so there `*` is any
 * run. Digest references carry no tag: only repository patterns apply to them.
 */
import type { FilterConfig, UpstreamRegistry } from "../config/upstreams.ts";
import { RegistryError } from "../oci/errors.ts";
import { globToRegExp } from "../oci/glob.ts";

/** Whether namespaces not in the upstream configuration are mirrored. */
export type UpstreamPolicy = "any" | "configured";

/**
 * Refuses what the operator does not mirror (--upstream-policy, per-namespace filters)
 * before storage or upstream is asked: cached content outside them is refused too.
 */
export class Admission {
  readonly #upstreams: UpstreamRegistry;
  readonly #policy: UpstreamPolicy;
  /** Compiled filters of the configured namespaces that have one. */
  readonly #filters = new Map<string, Filter>();

  constructor(upstreams: UpstreamRegistry, policy: UpstreamPolicy = "any") {
    this.#upstreams = upstreams;
    this.#policy = policy;
  }

  /** Throws the refusal when `repository` (and `tag`, if given) of `namespace` is not mirrored. */
  check(namespace: string, repository: string, tag?: string): void {
    const config = this.#upstreams.get(namespace);
    if (this.#policy === "configured" && !config.configured) {
      throw unconfiguredNamespace(namespace);
    }
    if (!config.filter) return;
    let filter = this.#filters.get(namespace);
    if (!filter) this.#filters.set(namespace, filter = new Filter(config.filter));
    filter.check(namespace, repository, tag);
  }
}

/** One namespace's filter, compiled once. */
export class Filter {
  readonly #allow?: RegExp[];
  readonly #exclude: RegExp[];
  readonly #allowTags?: RegExp[];
  readonly #excludeTags: RegExp[];
  readonly #status: 403 | 404;

  constructor(config: FilterConfig) {
    this.#allow = config.repositories?.map((g) => globToRegExp(g, true));
    this.#exclude = (config.excludeRepositories ?? []).map((g) => globToRegExp(g, true));
    this.#allowTags = config.tags?.map((g) => globToRegExp(g, false));
    this.#excludeTags = (config.excludeTags ?? []).map((g) => globToRegExp(g, false));
    this.#status = config.refusalStatus ?? 404;
  }

  /** Throws the configured refusal when `repository` (and `tag`, if given) may not be served. */
  check(namespace: string, repository: string, tag?: string): void {
    const matches = (patterns: RegExp[], value: string) => patterns.some((p) => p.test(value));
    if (
      (this.#allow && !matches(this.#allow, repository)) || matches(this.#exclude, repository)
    ) {
      throw this.#refusal(`repository ${repository} is not mirrored from ${namespace}`);
    }
    if (
      tag !== undefined &&
      ((this.#allowTags && !matches(this.#allowTags, tag)) || matches(this.#excludeTags, tag))
    ) {
      throw this.#refusal(`tag ${tag} of ${repository} is not mirrored from ${namespace}`);
    }
  }

  #refusal(message: string): RegistryError {
    return this.#status === 403
      ? new RegistryError("DENIED", message)
      : new RegistryError("NAME_UNKNOWN", message);
  }
}

/** The refusal for a namespace that `--upstream-policy configured` does not mirror. */
export function unconfiguredNamespace(namespace: string): RegistryError {
  return new RegistryError(
    "NAME_UNKNOWN",
    `${namespace} is not a registry this mirror is configured for (--upstream-policy configured)`,
  );
}
