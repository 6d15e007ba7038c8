/**
 * A scripted upstream registry whose one blob trickles out over `ms`, for tests of what happens
 * while a response is in progress (connection timeouts, shutdown). Edge cases only: the slow
 * server is the point; real pulls are tested against docker-registry.
 */
import { digestOf } from "../../src/digest.ts";
import { freePort } from "./tools.ts";

export interface SlowUpstream extends AsyncDisposable {
  /** `127.0.0.1:PORT`, for an upstream entry with `tls: false`. */
  host: string;
  blob: Uint8Array;
  digest: string;
  /** Blob GETs it was asked for. */
  blobGets(): number;
}

export function slowUpstream(ms: number, size = 64 * 1024): SlowUpstream {
  const blob = new Uint8Array(size).map((_, i) => i % 251);
  const digest = digestOf(blob);
  const port = freePort();
  let gets = 0;
  const chunks = 16;
  const server = Deno.serve({ hostname: "127.0.0.1", port, onListen() {} }, (request) => {
    const path = new URL(request.url).pathname;
    if (!path.includes("/blobs/")) return new Response("{}", { status: 200 });
    if (request.method === "GET") gets++;
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (sent === chunks) return controller.close();
        await new Promise((resolve) => setTimeout(resolve, ms / chunks));
        const step = Math.ceil(blob.byteLength / chunks);
        controller.enqueue(blob.slice(sent * step, (sent + 1) * step));
        sent++;
      },
    });
    return new Response(request.method === "HEAD" ? null : body, {
      headers: { "content-length": String(blob.byteLength), "docker-content-digest": digest },
    });
  });
  return {
    host: `127.0.0.1:${port}`,
    blob,
    digest,
    blobGets: () => gets,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}
