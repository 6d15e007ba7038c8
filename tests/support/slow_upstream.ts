/**
 * A scripted upstream registry whose one blob trickles out over `ms`, for tests of what happens
 * while a response is in progress (connection timeouts, shutdown). Edge cases only: the slow
 * server is the point; real pulls are tested against docker-registry.
 */
import { digestOf } from "../../src/oci/digest.ts";
import { freePort } from "./tools.ts";

export interface SlowUpstream extends AsyncDisposable {
  /** `127.0.0.1:PORT`, for an upstream entry with `tls: false`. */
  host: string;
  /** The first blob (and its digest); `blobs`/`digests` hold all of them. */
  blob: Uint8Array;
  digest: string;
  blobs: Uint8Array[];
  digests: string[];
  /** Blob GETs it was asked for. */
  blobGets(): number;
  /** The most blob GETs it had in progress at once. */
  mostAtOnce(): number;
}

export function slowUpstream(ms: number, size = 64 * 1024, count = 1): SlowUpstream {
  const blobs = Array.from(
    { length: count },
    (_, n) => new Uint8Array(size).map((_, i) => (i + n) % 251),
  );
  const digests = blobs.map((blob) => digestOf(blob));
  const port = freePort();
  let gets = 0;
  let inProgress = 0;
  let most = 0;
  const chunks = 16;
  const server = Deno.serve({ hostname: "127.0.0.1", port, onListen() {} }, (request) => {
    const path = new URL(request.url).pathname;
    if (!path.includes("/blobs/")) return new Response("{}", { status: 200 });
    const index = digests.findIndex((d) => path.endsWith(d));
    if (index < 0) return new Response("unknown", { status: 404 });
    const blob = blobs[index];
    const digest = digests[index];
    if (request.method === "GET") {
      gets++;
      most = Math.max(most, ++inProgress);
    }
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (sent === chunks) {
          inProgress--;
          return controller.close();
        }
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
    blob: blobs[0],
    digest: digests[0],
    blobs,
    digests,
    blobGets: () => gets,
    mostAtOnce: () => most,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}
