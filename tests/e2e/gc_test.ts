/**
 * `oci-registry gc` against the store a real mirror process fills from a real docker-registry,
 * on filesystem and on S3 (s3rver): the dry run lists exactly the garbage the test planted
 * (orphaned blobs, a tag link to a missing manifest, an expired upload) and nothing a pull or a
 * hosted repository keeps; `--delete` removes it while a pull runs, which finishes byte-exact.
 */
import { assert, assertEquals } from "../support/assert.ts";
import { buildImage, pushImage, skopeoPullDir } from "../support/images.ts";
import { type Mirror, startMirror } from "../support/mirror.ts";
import { s3MirrorArgs, startS3rver } from "../support/s3rver.ts";
import { startUpstream } from "../support/upstream.ts";
import { REPO_ROOT, run, sha256File, tempDir } from "../support/tools.ts";
import { digestOf } from "../../src/oci/digest.ts";
import { FilesystemStorage } from "../../src/storage/filesystem.ts";
import { S3Storage } from "../../src/storage/s3.ts";
import {
  blobKey,
  blobLinkKey,
  tagKey,
  uploadChunkKey,
  uploadPrefix,
} from "../../src/storage/layout.ts";
import type { Storage } from "../../src/storage/storage.ts";

const NS = "registry.test";
const encoder = new TextEncoder();

async function gc(storageArgs: string[], ...flags: string[]) {
  const result = await run(Deno.execPath(), [
    "run",
    "-A",
    `${REPO_ROOT}/src/main.ts`,
    "gc",
    "--hosted",
    "myorg",
    ...flags,
    ...storageArgs,
  ], { check: true, timeoutMs: 60_000 });
  const lines = result.stdout.trim().split("\n");
  const keys = lines.flatMap((line) => {
    const match = /^(?:would remove|removed) [^:]+: (\S+) \((\d+) bytes\)$/.exec(line);
    return match ? [match[1]] : [];
  });
  return { keys: keys.sort(), summary: lines[lines.length - 1] };
}

async function pull(mirror: Mirror, repo: string, image: ReturnType<typeof buildImage>) {
  await using dest = await tempDir();
  await skopeoPullDir({ host: mirror.host }, `${NS}/${repo}`, "1", dest.join("image"));
  for (const blob of [image.config, ...image.layers]) {
    assertEquals(await sha256File(dest.join("image", blob.sha256)), blob.sha256);
  }
}

const BACKENDS = {
  filesystem: () =>
    Promise.resolve({
      args: undefined as string[] | undefined,
      storage: (root: string): Storage => new FilesystemStorage(root),
      stop: () => Promise.resolve(),
    }),
  s3: async () => {
    const s3 = await startS3rver("gc-store");
    // A spool parent of this test's own: gc looks at every process's spools in it.
    const spools = await Deno.makeTempDir({ prefix: "gc-spools-" });
    return {
      args: s3MirrorArgs(s3, "--spool-dir", spools) as string[] | undefined,
      storage: (_root: string): Storage => new S3Storage({ ...s3.options, prefix: "" }),
      stop: async () => {
        await s3.stop();
        await Deno.remove(spools, { recursive: true });
      },
    };
  },
};

for (const [kind, makeBackend] of Object.entries(BACKENDS)) {
  Deno.test(`oci-registry gc: lists exactly the planted garbage, --delete removes it mid-pull [${kind}]`, async () => {
    const backend = await makeBackend();
    try {
      await using up = await startUpstream();
      await using mirror = await startMirror({
        upstreams: [{ namespace: NS, host: up.host, tls: false }],
        extraArgs: ["--hosted", "myorg"],
        storageArgs: backend.args,
      });
      const storageArgs = backend.args ?? ["filesystem", "--root", mirror.root!];
      const kept = await pushImage(up, "kept", "1", buildImage());
      await pull(mirror, "kept", kept);

      // Planted with the mirror's own storage code, as a crashed or older process would leave it.
      const storage = backend.storage(mirror.root ?? "");
      const orphanBytes = [encoder.encode("orphan one"), encoder.encode("orphan two!")];
      const orphans = orphanBytes.map((bytes) => digestOf(bytes));
      for (const [i, bytes] of orphanBytes.entries()) {
        await storage.write(blobKey(orphans[i]), bytes, { digest: orphans[i] });
      }
      const missing = digestOf(encoder.encode("a manifest nobody stored"));
      const danglingTag = tagKey(NS, "gone", "1");
      await storage.write(
        danglingTag,
        encoder.encode(
          JSON.stringify({ digest: missing, mediaType: "x", size: 1, confirmedAt: 0 }),
        ),
      );
      const upload = crypto.randomUUID();
      await storage.write(
        `${uploadPrefix(upload)}info`,
        encoder.encode(JSON.stringify({ name: "myorg/app", touched: 0 })),
      );
      await storage.write(uploadChunkKey(upload, 0), encoder.encode("half a layer"));
      // A blob a hosted repository links (pushed, its manifest not yet): kept.
      const hostedBytes = encoder.encode("hosted, no manifest yet");
      const hosted = digestOf(hostedBytes);
      await storage.write(blobKey(hosted), hostedBytes, { digest: hosted });
      await storage.write(blobLinkKey("myorg/app", hosted), new Uint8Array());
      await storage.close?.();

      const planted = [blobKey(orphans[0]), blobKey(orphans[1]), danglingTag, uploadPrefix(upload)]
        .sort();
      // Everything planted is seconds old: the default safety age (1h) keeps it all.
      assertEquals((await gc(storageArgs)).keys, []);
      const dry = await gc(storageArgs, "--min-age", "0s");
      assertEquals(dry.keys, planted);
      assert(dry.summary.startsWith("4 object(s), "), dry.summary);
      assert(dry.summary.includes("would be freed"), dry.summary);
      assertEquals((await gc(storageArgs, "--min-age", "0s")).keys, planted); // a dry run is dry

      // --delete while a pull of a new image runs: the pull is byte-exact, its content kept.
      const fresh = await pushImage(
        up,
        "fresh",
        "1",
        buildImage({ layers: 3, layerSize: 4 << 20, gzip: false }),
      );
      const [, removed] = await Promise.all([
        pull(mirror, "fresh", fresh),
        gc(storageArgs, "--min-age", "0s", "--delete"),
      ]);
      assertEquals(removed.keys, planted);
      assert(/^4 object\(s\), \d+ bytes freed$/.test(removed.summary), removed.summary);
      assertEquals((await gc(storageArgs, "--min-age", "0s")).keys, []);

      // Nothing the pulls keep was touched: both come back without an upstream blob GET.
      up.clearLog();
      await pull(mirror, "kept", kept);
      await pull(mirror, "fresh", fresh);
      for (const blob of [kept.config, ...kept.layers, fresh.config, ...fresh.layers]) {
        assertEquals(await up.countBlobGets(blob.digest), 0, blob.digest);
      }
      const check = backend.storage(mirror.root ?? "");
      assert(await check.stat(blobKey(hosted)), "the hosted blob was removed");
      assertEquals(await check.stat(blobKey(orphans[0])), null);
      await check.close?.();
    } finally {
      await backend.stop();
    }
  });
}

Deno.test("oci-registry gc: a namespace hosted only by the upstream file's hosted: keeps its links", async () => {
  await using dir = await tempDir();
  const root = dir.join("root");
  const storage = new FilesystemStorage(root);
  const bytes = encoder.encode("pushed to a file-hosted namespace, no manifest yet");
  const digest = digestOf(bytes);
  await storage.write(blobKey(digest), bytes, { digest });
  await storage.write(blobLinkKey("internal/app", digest), new Uint8Array());
  await storage.close?.();
  const file = dir.join("upstreams.yaml");
  await Deno.writeTextFile(file, "upstreams: []\nhosted: [internal]\n");
  const dryRun = async (...flags: string[]) => {
    const result = await run(Deno.execPath(), [
      "run",
      "-A",
      `${REPO_ROOT}/src/main.ts`,
      "gc",
      "--min-age",
      "0s",
      ...flags,
      "filesystem",
      "--root",
      root,
    ], { check: true, timeoutMs: 60_000 });
    return result.stdout;
  };
  // Without the file the blob is an orphan (the control); with it, a hosted repository's.
  const without = await dryRun();
  assert(without.includes(blobKey(digest)), without);
  const withFile = await dryRun("--upstream-config-file", file);
  assert(!withFile.includes(blobKey(digest)), withFile);
  assert(withFile.trim().split("\n").pop()!.startsWith("0 object(s)"), withFile);
});
