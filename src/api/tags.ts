/** GET /v2/<name>/tags/list, passed through to upstream with its pagination. */
import type { Mirror } from "../cache/mirror.ts";
import { RegistryError } from "../oci/errors.ts";
import type { ResolvedName } from "../oci/namespace.ts";

export async function listTags(
  mirror: Mirror,
  name: ResolvedName,
  pathName: string,
  params: URLSearchParams,
): Promise<Response> {
  const query = new URLSearchParams();
  for (const key of ["n", "last"]) {
    const value = params.get(key);
    if (value !== null) query.set(key, value);
  }
  const upstream = await mirror.listTags(name.namespace, name.repository, query);
  const headers = new Headers({ "content-type": "application/json" });
  const next = nextLink(upstream.headers.get("link"), pathName, params.get("ns"));
  if (next) headers.set("link", next);
  const last = params.get("last");
  if (last === null) return new Response(upstream.body, { status: 200, headers });
  // Some upstreams (distribution 2.8) ignore `last` without `n`: apply it here as well.
  let body: { tags?: unknown };
  try {
    body = await upstream.json();
  } catch (e) {
    throw new RegistryError("UPSTREAM_ERROR", "upstream's tag list is not JSON", { cause: e });
  }
  if (Array.isArray(body?.tags)) body.tags = body.tags.filter((tag) => String(tag) > last);
  return new Response(JSON.stringify(body), { status: 200, headers });
}

/** Rewrites upstream's `Link: </v2/repo/tags/list?last=x&n=y>; rel="next"` for our paths. */
function nextLink(link: string | null, pathName: string, ns: string | null): string | undefined {
  const match = link ? /<([^>]*)>\s*;\s*rel="?next"?/.exec(link) : null;
  if (!match) return undefined;
  const upstreamQuery = new URL(match[1], "http://upstream").searchParams;
  const query = new URLSearchParams();
  for (const key of ["n", "last"]) {
    const value = upstreamQuery.get(key);
    if (value !== null) query.set(key, value);
  }
  if (ns) query.set("ns", ns);
  return `</v2/${pathName}/tags/list?${query}>; rel="next"`;
}
