/**
 * The mirror's own access log as data: every request it answered, in order, so a test can show
 * exactly what a real client asked for and what the mirror said.
 *
 *   mirror.clearLogs();
 *   ... a client pulls ...
 *   const requests = await mirrorRequests(mirror);   // [{ method, path, status }, ...]
 */
import { assert, assertMatch } from "./assert.ts";
import type { Mirror } from "./mirror.ts";
import type { Upstream } from "./upstream.ts";

export interface MirrorRequest {
  method: string;
  /** Path with query string. */
  path: string;
  status: number;
}

const MIRROR_ACCESS_LINE = /^(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) (\d{3}) /;
let syncCounter = 0;

/**
 * The requests the mirror logged since the last `clearLogs()`, after making sure every request
 * answered so far is in the log (a marker request must show up first). The markers
 * (`/healthz?sync=N`) are left out.
 */
export async function mirrorRequests(mirror: Mirror): Promise<MirrorRequest[]> {
  const marker = `/healthz?sync=${++syncCounter}`;
  const response = await mirror.fetch(marker);
  await response.body?.cancel();
  await mirror.waitForLog(new RegExp(`^GET ${escapeRegExp(marker)} `));
  const requests: MirrorRequest[] = [];
  for (const line of mirror.logs().split("\n")) {
    const match = MIRROR_ACCESS_LINE.exec(line);
    if (!match || match[2].startsWith("/healthz")) continue;
    requests.push({ method: match[1], path: match[2], status: Number(match[3]) });
  }
  return requests;
}

/** One request per line, for assertion messages. */
export function show(requests: MirrorRequest[]): string {
  return requests.map((r) => `${r.method} ${r.path} ${r.status}`).join("\n");
}

export function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Every request must have been answered 2xx and none may have been a write. */
export function assertAllServed(requests: MirrorRequest[]): void {
  assert(requests.length > 0, "the mirror served the pull");
  for (const r of requests) {
    assert(r.status >= 200 && r.status < 300, `mirror answered ${r.status}:\n${show(requests)}`);
    assert(r.method === "GET" || r.method === "HEAD", `read-only:\n${show(requests)}`);
  }
}

/** The upstream requests since the last clearLog all came from the mirror, not a client. */
export async function assertOnlyMirrorAskedUpstream(up: Upstream): Promise<void> {
  await up.sync();
  for (const r of up.requests()) {
    assertMatch(r.userAgent, /^oci-registry\//, `upstream request ${r.method} ${r.path}`);
  }
}
