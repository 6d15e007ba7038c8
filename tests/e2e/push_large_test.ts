/**
 * A 1 GiB push to a hosted repository, monolithic and in 128 MiB chunks, at constant memory: the
 * mirror process's resident memory may grow by a few tens of MiB, never by the blob. The client
 * is curl streaming files. The pulled bytes hash to the pushed digest.
 */
import { createHash } from "node:crypto";
import { assert, assertEquals } from "../support/assert.ts";
import { startMirror } from "../support/mirror.ts";
import { run, tempDir } from "../support/tools.ts";

const MiB = 1 << 20;
const GiB = 1 << 30;
const PART = 128 * MiB;
/** What the process may add while taking 1 GiB twice (measured here: about 30 MiB). */
const MAX_ADDED_RSS = 100 * MiB;

function memoryOf(pid: number): { rss: number; hwm: number } {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)![1]);
  return { rss: kb("VmRSS") * 1024, hwm: kb("VmHWM") * 1024 };
}

async function curl(args: string[]): Promise<number> {
  const result = await run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", ...args], {
    timeoutMs: 300_000,
  });
  return Number(result.stdout);
}

Deno.test("a 1 GiB push, monolithic and chunked, at constant memory", async () => {
  await using mirror = await startMirror({
    extraArgs: ["--hosted", "myorg", "--allow-anonymous-push"],
  });
  await using dir = await tempDir();
  const pid = Number((await run("pgrep", ["-f", `listen 127.0.0.1:${mirror.port} `])).stdout);
  assert(pid > 0, "the mirror's pid");

  // 1 GiB in 8 part files (a random MiB, varied per MiB), and the digest of the whole.
  const block = new Uint8Array(MiB);
  for (let i = 0; i < MiB; i += 65536) crypto.getRandomValues(block.subarray(i, i + 65536));
  const hash = createHash("sha256");
  const parts: string[] = [];
  for (let p = 0; p < GiB / PART; p++) {
    const file = await Deno.open(dir.join(`part${p}`), { write: true, create: true });
    for (let m = 0; m < PART / MiB; m++) {
      block[0] = (p * 128 + m) & 0xff;
      hash.update(block);
      await file.write(block);
    }
    file.close();
    parts.push(dir.join(`part${p}`));
  }
  const digest = `sha256:${hash.digest("hex")}`;
  const whole = dir.join("whole");
  await run("sh", ["-c", `cat ${parts.join(" ")} > ${whole}`], { check: true });

  const warm = await mirror.fetch(`/v2/myorg/warm/blobs/uploads/`, { method: "POST" });
  await warm.body?.cancel();
  const before = memoryOf(pid).rss;

  // No trailing "/": curl -T would append the file name to it.
  const monolithic = `${mirror.url}/v2/myorg/big/blobs/uploads?digest=${digest}`;
  assertEquals(await curl(["-X", "POST", "-T", whole, monolithic]), 201);

  const post = await mirror.fetch(`/v2/myorg/chunked/blobs/uploads/`, { method: "POST" });
  const location = `${mirror.url}${post.headers.get("location")}`;
  await post.body?.cancel();
  for (const [i, part] of parts.entries()) {
    const range = `${i * PART}-${(i + 1) * PART - 1}`;
    assertEquals(
      await curl(["-X", "PATCH", "-H", `content-range: ${range}`, "-T", part, location]),
      202,
    );
  }
  assertEquals(await curl(["-X", "PUT", `${location}?digest=${digest}`]), 201);

  const added = memoryOf(pid).hwm - before;
  console.log(`resident memory added by two 1 GiB pushes: ${(added / MiB).toFixed(1)} MiB`);
  assert(added < MAX_ADDED_RSS, `resident memory grew by ${(added / MiB).toFixed(1)} MiB`);

  for (const repo of ["big", "chunked"]) {
    const pulled = await mirror.fetch(`/v2/myorg/${repo}/blobs/${digest}`);
    assertEquals(pulled.headers.get("content-length"), String(GiB));
    const check = createHash("sha256");
    for await (const chunk of pulled.body!) check.update(chunk);
    assertEquals(`sha256:${check.digest("hex")}`, digest, `${repo} pulled back byte-exact`);
  }
});
