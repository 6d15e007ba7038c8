import { Buffer } from "node:buffer";
import { assert, assertEquals } from "../../tests/support/assert.ts";
import { MAX_TOKEN_CHARS, TokenSigner } from "./token.ts";

const KEY = new Uint8Array(32).fill(7);

Deno.test("tokens: issued claims verify until they expire", () => {
  const clock = { now: 1_700_000_000_000 };
  const signer = new TokenSigner(KEY, 300_000, () => clock.now);
  const { token, claims } = signer.issue("alice", { "hosted:myorg/app": ["pull", "push"] });
  assertEquals(signer.verify(token), claims);
  assertEquals(claims.exp - claims.iat, 300);
  clock.now += 299_000;
  assert(signer.verify(token) !== null);
  clock.now += 1_000;
  assertEquals(signer.verify(token), null, "expired");
});

Deno.test("tokens: forged, altered, foreign-keyed and garbage tokens are refused", () => {
  const signer = new TokenSigner(KEY, 300_000);
  const other = new TokenSigner(new Uint8Array(32).fill(8), 300_000);
  const { token } = signer.issue("bob", { "hosted:myorg/app": ["pull"] });
  const [payload, signature] = token.split(".");
  const claims = JSON.parse(Buffer.from(payload, "base64url").toString());
  claims.access["hosted:myorg/app"].push("push");
  const widened = Buffer.from(JSON.stringify(claims)).toString("base64url");
  for (
    const bad of [
      `${widened}.${signature}`,
      other.issue("bob", { "hosted:myorg/app": ["pull"] }).token,
      `${payload}.`,
      `.${signature}`,
      payload,
      "",
      "a.b.c",
      `${payload}.${signature}x`,
      "x".repeat(MAX_TOKEN_CHARS + 1),
      `${Buffer.from("null").toString("base64url")}.x`,
    ]
  ) assertEquals(signer.verify(bad), null, bad.slice(0, 40));
});
