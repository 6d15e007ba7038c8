/**
 * Listings: GET /v2/<name>/tags/list, /v2/<name>/referrers/<digest> and /v2/_catalog, with
 * `n`/`last` pagination and a `Link` header to the next page.
 */
import { parseDigest } from "../../oci/digest.ts";
import { RegistryError } from "../../oci/errors.ts";
import { OCI_INDEX } from "../../oci/media_types.ts";
import type { Page, Registry } from "../../registry/registry.ts";

/**
 * `path` is the listing's path as the client asked for it (a mirrored name may carry a host
 * prefix, or `?ns=`, which the next page's link keeps).
 */
export async function listTags(
  registry: Registry,
  name: string,
  query: URLSearchParams,
  path: string,
): Promise<Response> {
  const options = pageOptions(query);
  const page = await registry.tags.list(name, options);
  const ns = query.get("ns");
  return listing({ name: page.name, tags: page.items }, page, path, options.n, ns);
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

export async function listReferrers(
  registry: Registry,
  name: string,
  reference: string,
  query: URLSearchParams,
): Promise<Response> {
  const digest = parseDigest(reference).toString();
  const artifactType = query.get("artifactType") || undefined;
  const manifests = await registry.referrers.list(name, digest, artifactType);
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

function listing(
  body: unknown,
  page: Page,
  path: string,
  n: number | undefined,
  ns: string | null = null,
): Response {
  const headers = new Headers({ "content-type": "application/json" });
  if (page.next !== undefined) {
    const next = new URLSearchParams();
    if (n !== undefined) next.set("n", String(n));
    next.set("last", page.next);
    if (ns) next.set("ns", ns);
    headers.set("link", `<${path}?${next}>; rel="next"`);
  }
  return new Response(JSON.stringify(body), { status: 200, headers });
}
