/**
 * Requests for upstreams with `accept_invalid_certs: true`. Deno's fetch has no per-client way
 * to skip certificate verification; node's `rejectUnauthorized: false` is the one
 * per-connection way it offers. Loaded only when such an upstream is used, so the rest of the
 * time the process does not carry node:https.
 */
import https from "node:https";
import type { IncomingMessage } from "node:http";
import { Readable } from "node:stream";

export interface InsecureTransport {
  fetch(
    url: URL,
    init: { method: string; headers: Headers; signal: AbortSignal },
  ): Promise<Response>;
  close(): void;
}

export function createInsecureTransport(): InsecureTransport {
  const agent = new https.Agent({ keepAlive: true, rejectUnauthorized: false });
  return {
    fetch: (url, init) => nodeHttpsFetch(url, init, agent),
    close: () => agent.destroy(),
  };
}

/**
 * fetch-like request over node:https, used only for upstreams that accept invalid certificates
 * (node's `rejectUnauthorized: false` is the one per-connection way Deno offers to skip
 * verification). Returns the response without following redirects; the body streams.
 */
function nodeHttpsFetch(
  url: URL,
  init: { method: string; headers: Headers; signal: AbortSignal },
  agent: https.Agent,
): Promise<Response> {
  return new Promise<Response>((resolve, reject) => {
    const headers: Record<string, string> = {};
    init.headers.forEach((value, key) => headers[key] = value);
    const request = https.request(url, {
      method: init.method,
      headers,
      agent,
      signal: init.signal,
      rejectUnauthorized: false,
    }, (message: IncomingMessage) => {
      const responseHeaders = new Headers();
      for (let i = 0; i + 1 < message.rawHeaders.length; i += 2) {
        try {
          responseHeaders.append(message.rawHeaders[i], message.rawHeaders[i + 1]);
        } catch {
          // skip a header the Fetch API does not accept
        }
      }
      const status = message.statusCode ?? 502;
      const bodyless = init.method === "HEAD" || status === 204 || status === 304;
      if (bodyless) message.resume();
      try {
        resolve(
          new Response(
            bodyless ? null : Readable.toWeb(message) as unknown as ReadableStream<Uint8Array>,
            { status, statusText: message.statusMessage ?? "", headers: responseHeaders },
          ),
        );
      } catch (e) {
        message.destroy();
        reject(e);
      }
    });
    request.on("error", reject);
    request.end();
  });
}
