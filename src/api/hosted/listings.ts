/**
 * Listings of hosted content: GET /v2/<name>/tags/list, /v2/<name>/referrers/<digest> and
 * /v2/_catalog, with `n`/`last` pagination and a `Link` header to the next page.
 */
import { parseDigest } from "../../digest.ts";
import { RegistryError } from "../../oci/errors.ts";
import { OCI_INDEX } from "../../oci/media_types.ts";
import type { Page, ReferrerStore, Registry } from "../../registry/registry.ts";

export async function listTags(
  registry: Registry,
  name: string,
  query: URLSearchParams,
): Promise<Response> {
  const options = pageOptions(query);
  const page = await registry.tags.list(name, options);
  return listing({ name, tags: page.items }, page, `/v2/${name}/tags/list`, options.n);
}

/** `visible`, when given, keeps the names a client may see (its page can come out shorter). */
export async function listCatalog(
  registry: Registry,
  query: URLSearchParams,
  visible?: (name: string) => boolean,
): Promise<Response> {
  const options = pageOptions(query);
  const page = await registry.catalog(options);
  const repositories = visible ? page.items.filter(visible) : page.items;
  return listing({ repositories }, page, "/v2/_catalog", options.n);
}

/** For hosted repositories and (through the mirror's store) mirrored ones alike. */
export async function listReferrers(
  referrers: ReferrerStore,
  name: string,
  reference: string,
  query: URLSearchParams,
): Promise<Response> {
  const digest = parseDigest(reference).toString();
  const artifactType = query.get("artifactType") || undefined;
  const manifests = await referrers.list(name, digest, artifactType);
  const headers = new Headers({ "content-type": OCI_INDEX });
  if (artifactType !== undefined) headers.set("oci-filters-applied", "artifactType");
  const body = JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests });
  return new Response(body, { status: 200, headers });
}

function pageOptions(query: URLSearchParams): { n?: number; last?: string } {
  const n = query.get("n");
  if (n !== null && !/^\d{1,9}$/.test(n)) {
    throw new RegistryError("BAD_REQUEST", `n must be a non-negative number, got ${n}`);
  }
  return { n: n === null ? undefined : Number(n), last: query.get("last") ?? undefined };
}

function listing(body: unknown, page: Page, path: string, n: number | undefined): Response {
  const headers = new Headers({ "content-type": "application/json" });
  if (page.next !== undefined) {
    const next = new URLSearchParams({ n: String(n), last: page.next });
    headers.set("link", `<${path}?${next}>; rel="next"`);
  }
  return new Response(JSON.stringify(body), { status: 200, headers });
}
