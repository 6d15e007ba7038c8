/**
 * Lists of a mirrored repository that come from upstream: its tags and the referrers of a
 * manifest. Each is asked of upstream every time (lists change), and the last whole answer is
 * stored so that it is served stale when upstream is unreachable.
 */
import type { LogFn } from "../runtime/log.ts";
import { isUnavailable, RegistryError } from "../oci/errors.ts";
import { MAX_MANIFEST_BYTES } from "../oci/media_types.ts";
import type { Descriptor, Page } from "../registry/registry.ts";
import { mirroredReferrersKey, tagListKey } from "../storage/layout.ts";
import type { Storage } from "../storage/storage.ts";
import type { MirrorContext } from "./context.ts";
import type { StoreHealth } from "./store_health.ts";
import { describe, readLimited, servesStale, type Upstream } from "./upstream_port.ts";

/** Largest whole tag list stored for stale serving (about 300k tags). */
const MAX_TAG_LIST_BYTES = 16 << 20;

/** A manifest by tag or digest as the mirror serves it (for the referrers fallback tag). */
export type GetManifest = (
  namespace: string,
  repository: string,
  reference: string,
  accept: string[],
) => Promise<{ bytes: Uint8Array }>;

export class Listings {
  readonly #storage: Storage;
  readonly #health: StoreHealth;
  readonly #upstream: Upstream;
  readonly #log: LogFn;
  readonly #manifest: GetManifest;

  constructor(context: MirrorContext, manifest: GetManifest) {
    this.#storage = context.storage;
    this.#health = context.health;
    this.#upstream = context.upstream;
    this.#log = context.log;
    this.#manifest = manifest;
  }

  /**
   * The upstream's tag list (with `n` and `last`), and where its next page starts. A whole
   * list (no `n`, no `last`) is also stored, and served stale when upstream is unreachable,
   * refuses, or rate-limits.
   */
  async tags(
    namespace: string,
    repository: string,
    options: { n?: number; last?: string },
  ): Promise<Page & { name: string }> {
    const query = new URLSearchParams();
    if (options.n !== undefined) query.set("n", String(options.n));
    if (options.last !== undefined) query.set("last", options.last);
    const whole = options.n === undefined && options.last === undefined;
    const key = tagListKey(namespace, repository);
    let response: Response;
    try {
      response = await this.#upstream.tags(namespace, repository, query);
    } catch (e) {
      const cached = whole && servesStale(e) ? await this.#storage.readBytes(key) : null;
      if (!cached) throw e;
      this.#log(`serving stale tag list of ${namespace}/${repository}: ${describe(e)}`);
      return parseTagList(cached, repository, options.last);
    }
    const bytes = await readLimited(response, MAX_TAG_LIST_BYTES, `tags of ${repository}`);
    const page = parseTagList(bytes, repository, options.last);
    const next = nextLast(response.headers.get("link"));
    if (next !== undefined) page.next = next;
    if (whole) {
      await this.#health.write(
        `tag list of ${namespace}/${repository} not recorded`,
        () => this.#storage.write(key, bytes),
      );
    }
    return page;
  }

  /**
   * The referrers of a mirrored manifest: upstream's referrers API, else (upstream has none) the
   * fallback tag `sha256-<hex>` the spec defines, fetched and cached like any manifest. The API's
   * answer is stored too, so an unreachable upstream still gets the last list (stale).
   */
  async referrers(
    namespace: string,
    repository: string,
    digest: string,
    artifactType?: string,
  ): Promise<Descriptor[]> {
    const all = await this.#allReferrers(namespace, repository, digest);
    return artifactType === undefined ? all : all.filter((d) => d.artifactType === artifactType);
  }

  async #allReferrers(
    namespace: string,
    repository: string,
    digest: string,
  ): Promise<Descriptor[]> {
    const key = mirroredReferrersKey(namespace, repository, digest);
    let response: Response | undefined;
    try {
      response = await this.#upstream.referrers?.(namespace, repository, digest);
    } catch (e) {
      if (isUnavailable(e)) {
        const cached = await this.#storage.readBytes(key);
        if (cached) {
          this.#log(`serving stale referrers of ${digest} in ${namespace}/${repository}`);
          return parseDescriptors(cached) ?? [];
        }
      }
      if (!(e instanceof RegistryError && e.code === "MANIFEST_UNKNOWN")) throw e;
    }
    if (response) {
      const bytes = await readLimited(response, MAX_MANIFEST_BYTES, `referrers of ${digest}`);
      const descriptors = parseDescriptors(bytes);
      if (!descriptors) {
        throw new RegistryError("UPSTREAM_ERROR", `upstream's referrers of ${digest} are no index`);
      }
      await this.#health.write(
        `referrers of ${digest} in ${namespace}/${repository} not recorded`,
        () =>
          this.#storage.write(
            key,
            new TextEncoder().encode(JSON.stringify({ manifests: descriptors })),
          ),
      );
      return descriptors;
    }
    const [algorithm, hex] = digest.split(":");
    try {
      const index = await this.#manifest(namespace, repository, `${algorithm}-${hex}`, [
        "application/vnd.oci.image.index.v1+json",
      ]);
      return parseDescriptors(index.bytes) ?? [];
    } catch (e) {
      if (e instanceof RegistryError && e.code === "MANIFEST_UNKNOWN") return [];
      throw e;
    }
  }
}

/**
 * An upstream's tag list body. Some upstreams (distribution 2.8) ignore `last` without `n`:
 * it is applied here as well.
 */
function parseTagList(
  bytes: Uint8Array,
  repository: string,
  last: string | undefined,
): Page & { name: string } {
  let body: { name?: unknown; tags?: unknown };
  try {
    body = JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new RegistryError("UPSTREAM_ERROR", "upstream's tag list is not JSON", { cause: e });
  }
  const tags = Array.isArray(body?.tags) ? body.tags.map(String) : [];
  return {
    name: typeof body?.name === "string" ? body.name : repository,
    items: last === undefined ? tags : tags.filter((tag) => tag > last),
  };
}

/** The `last` of upstream's `Link: </v2/repo/tags/list?last=x&n=y>; rel="next"`. */
function nextLast(link: string | null): string | undefined {
  const match = link ? /<([^>]*)>\s*;\s*rel="?next"?/.exec(link) : null;
  if (!match) return undefined;
  return new URL(match[1], "http://upstream").searchParams.get("last") ?? undefined;
}

/** The `manifests` of an image index, or null when `bytes` is no index. */
function parseDescriptors(bytes: Uint8Array): Descriptor[] | null {
  try {
    const doc = JSON.parse(new TextDecoder().decode(bytes));
    return Array.isArray(doc?.manifests) ? doc.manifests : null;
  } catch {
    return null;
  }
}
