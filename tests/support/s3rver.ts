/**
 * Runs s3rver (npm:s3rver, the real S3 HTTP protocol backed by a directory) in a subprocess for
 * tests. The version is pinned here and, through the project's deno.json, in deno.lock.
 *
 *   const s3 = await startS3rver();       // bucket created, ready to use
 *   new S3Storage({ ...s3.options, prefix: "t1/" });
 *   await s3.stop();                      // kills it and removes its directory
 *
 * The subprocess is this very file run as a program (`deno run -A s3rver.ts DIR BUCKET`), not
 * s3rver's own CLI, for one reason: s3rver encrypts ListObjectsV2 continuation tokens with DES,
 * which Deno's node:crypto does not implement, so every truncated listing (more than 1000 keys)
 * failed with InternalError. The program below swaps that private token cipher for AES first.
 */
import { CreateBucketCommand, S3Client } from "@aws-sdk/client-s3";

export const S3RVER = "npm:s3rver@3.7.1";
const CONFIG = new URL("../../deno.json", import.meta.url).pathname;
const READY = "S3RVER READY ";

export interface S3rver {
  /** `http://127.0.0.1:PORT` */
  endpoint: string;
  port: number;
  bucket: string;
  /** What S3Storage needs to talk to this server (spread it and add a prefix). */
  options: {
    endpoint: string;
    region: string;
    bucket: string;
    accessKeyId: string;
    secretAccessKey: string;
    forcePathStyle: boolean;
  };
  /** Freezes (SIGSTOP) the server: it still accepts connections but never answers. */
  pause(): void;
  /** Thaws a paused server (SIGCONT). */
  resume(): void;
  /** Stops the server and removes its data directory. Idempotent. */
  stop(): Promise<void>;
}

/** The mirror's command line for this server's bucket: `s3 --bucket ... [extra flags]`. */
export function s3MirrorArgs(s3: S3rver, ...extra: string[]): string[] {
  return [
    "s3",
    "--bucket",
    s3.bucket,
    "--endpoint",
    s3.endpoint,
    "--access-key",
    s3.options.accessKeyId,
    "--secret-key",
    s3.options.secretAccessKey,
    ...extra,
  ];
}

export async function startS3rver(bucket = "test-bucket"): Promise<S3rver> {
  const dir = await Deno.makeTempDir({ prefix: "s3rver-" });
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", "--config", CONFIG, new URL(import.meta.url).pathname, dir],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Drain both pipes for the whole life of the process (a full pipe would block it).
  let output = "";
  const ready = Promise.withResolvers<number>();
  const drain = async (stream: ReadableStream<Uint8Array>) => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      output += text;
      const match = new RegExp(`${READY}(\\d+)`).exec(output);
      if (match) ready.resolve(Number(match[1]));
    }
  };
  const drained = Promise.all([drain(child.stdout), drain(child.stderr)]);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    try {
      child.kill("SIGCONT");
      child.kill("SIGTERM");
    } catch { /* already gone */ }
    await child.status;
    await drained;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  let port: number;
  // The first run may have to download the package.
  const timer = setTimeout(() => ready.reject(new Error("s3rver did not start in 60 s")), 60_000);
  child.status.then((status) =>
    ready.reject(new Error(`s3rver exited with ${status.code}: ${output}`))
  );
  try {
    port = await ready.promise;
    const client = new S3Client({
      endpoint: `http://127.0.0.1:${port}`,
      region: "us-east-1",
      forcePathStyle: true,
      credentials: { accessKeyId: "S3RVER", secretAccessKey: "S3RVER" },
    });
    try {
      await client.send(new CreateBucketCommand({ Bucket: bucket }));
    } finally {
      client.destroy();
    }
  } catch (e) {
    await stop();
    throw new Error(`${(e as Error).message}\n${output}`, { cause: e });
  } finally {
    clearTimeout(timer);
  }
  const endpoint = `http://127.0.0.1:${port}`;
  return {
    endpoint,
    port,
    bucket,
    options: {
      endpoint,
      region: "us-east-1",
      bucket,
      accessKeyId: "S3RVER",
      secretAccessKey: "S3RVER",
      forcePathStyle: true,
    },
    pause: () => child.kill("SIGSTOP"),
    resume: () => child.kill("SIGCONT"),
    stop,
  };
}

/** The subprocess: s3rver on 127.0.0.1 and an ephemeral port, data in Deno.args[0]. */
async function main(directory: string): Promise<void> {
  const crypto = (await import("node:crypto")).default;
  // s3rver's continuation tokens are an opaque private format: `iv(8) + DES-CBC(text)`. Deno
  // has no DES, so use AES-128-CBC with the 8-byte key and IV doubled; same token shape.
  const double = (b: Uint8Array) => new Uint8Array([...b, ...b]);
  const createCipheriv = crypto.createCipheriv;
  const createDecipheriv = crypto.createDecipheriv;
  Object.assign(crypto, {
    // deno-lint-ignore no-explicit-any
    createCipheriv: (algorithm: string, key: any, iv: any, options?: any) =>
      algorithm === "des"
        ? createCipheriv("aes-128-cbc", double(key), double(iv), options)
        : createCipheriv(algorithm, key, iv, options),
    // deno-lint-ignore no-explicit-any
    createDecipheriv: (algorithm: string, key: any, iv: any, options?: any) =>
      algorithm === "des"
        ? createDecipheriv("aes-128-cbc", double(key), double(iv), options)
        : createDecipheriv(algorithm, key, iv, options),
  });
  // Pinned right here (and so in deno.lock); tests never import s3rver in-process.
  // deno-lint-ignore no-import-prefix
  const { default: S3rverServer } = await import("npm:s3rver@3.7.1");
  const server = new S3rverServer({ address: "127.0.0.1", port: 0, silent: true, directory });
  const address = await server.run();
  console.log(`${READY}${address.port}`);
  Deno.addSignalListener("SIGTERM", () => {
    server.close().finally(() => Deno.exit(0));
  });
}

if (import.meta.main) await main(Deno.args[0]);
