import { assert, assertEquals, assertRejects } from "../../tests/support/assert.ts";
import { defaultUpstream, type UpstreamConfig } from "../config/upstreams.ts";
import { RegistryError } from "../oci/errors.ts";
import { tokenCacheKey } from "./auth.ts";
import { Authorizer, type TokenTransport } from "./authorizer.ts";

const upstream: UpstreamConfig = {
  ...defaultUpstream("registry.test"),
  configured: true,
  username: "mirror",
  password: "s3cret",
};
const key = tokenCacheKey(upstream, "org/app");
const target = { upstream, repository: "org/app" };
const bearer = 'Bearer realm="https://auth.test/token",service="registry.test"';

/** A token server answering every request with `answer`, recording the URLs and headers. */
function tokenServer(answer: () => Response) {
  const seen: { url: URL; authorization: string | null }[] = [];
  const transport: TokenTransport = {
    follow: (_upstream, url, _method, headers) => {
      seen.push({ url, authorization: headers.get("authorization") });
      return Promise.resolve({ response: answer(), url });
    },
    guard: (response) => response.body!,
  };
  return { seen, authorizer: new Authorizer(transport, () => {}) };
}

Deno.test("authorizer: a Bearer challenge gets one token, cached and sent up front after", async () => {
  const { seen, authorizer } = tokenServer(() => Response.json({ token: "t1", expires_in: 300 }));
  assertEquals(authorizer.proactive(upstream, key), undefined);
  const [a, b] = await Promise.all([
    authorizer.authorize(target, key, bearer, undefined),
    authorizer.authorize(target, key, bearer, undefined),
  ]);
  assertEquals([a, b], ["Bearer t1", "Bearer t1"]);
  assertEquals(seen.length, 1, "concurrent callers share one token request");
  assertEquals(seen[0].url.searchParams.get("scope"), "repository:org/app:pull");
  assert(seen[0].authorization?.startsWith("Basic "), "configured credentials go to the realm");
  assertEquals(authorizer.proactive(upstream, key), "Bearer t1");
  authorizer.close();
  assertEquals(authorizer.proactive(upstream, key), undefined, "close forgets tokens");
});

Deno.test("authorizer: Basic is answered once, then sent up front; a second refusal is final", async () => {
  const { seen, authorizer } = tokenServer(() => new Response(null, { status: 500 }));
  const basic = await authorizer.authorize(target, key, 'Basic realm="x"', undefined);
  assert(basic.startsWith("Basic "));
  assertEquals(authorizer.proactive(upstream, key), basic);
  const error = await assertRejects(
    () => authorizer.authorize(target, key, 'Basic realm="x"', basic),
    RegistryError,
    "rejected the mirror's credentials",
  );
  assertEquals(error.code, "UPSTREAM_ERROR");
  assertEquals(seen.length, 0, "no token server involved");
});

Deno.test("authorizer: token server refusals and empty answers are UPSTREAM_ERROR without secrets", async () => {
  for (
    const answer of [
      () => new Response(JSON.stringify({ errors: [{ message: "bad s3cret" }] }), { status: 401 }),
      () => Response.json({ nothing: true }),
    ]
  ) {
    const { authorizer } = tokenServer(answer);
    const error = await assertRejects(
      () => authorizer.authorize(target, key, bearer, undefined),
      RegistryError,
    );
    assertEquals(error.code, "UPSTREAM_ERROR");
    assert(!error.message.includes("s3cret"), error.message);
  }
});

Deno.test("authorizer: a client's token request says what the token server thought of it", async () => {
  const client = { ...upstream, username: "alice", password: "pw" };
  const challenge = { scheme: "bearer", params: { realm: "https://auth.test/token" } };
  for (const [status, verdict] of [[401, "unauthorized"], [403, "denied"]] as const) {
    const { authorizer } = tokenServer(() => new Response(null, { status }));
    assertEquals(await authorizer.clientToken(client, "org/app", challenge, undefined), verdict);
  }
  const { authorizer } = tokenServer(() => Response.json({ access_token: "once" }));
  assertEquals(await authorizer.clientToken(client, "org/app", challenge, undefined), "once");
  assertEquals(authorizer.proactive(client, key), undefined, "a client's token is not cached");
  await assertRejects(
    () =>
      authorizer.clientToken(client, "org/app", {
        scheme: "bearer",
        params: { realm: "http://auth.test/token" },
      }, undefined),
    RegistryError,
    "plain-http token realm",
  );
});
