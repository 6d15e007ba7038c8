/** The storage contract against FilesystemStorage, plus what only a filesystem has. */
import { FilesystemStorage } from "../src/storage/filesystem.ts";
import { blobKey } from "../src/storage/layout.ts";
import { digestOf } from "../src/oci/digest.ts";
import { assert, assertEquals, assertRejects } from "./support/assert.ts";
import { lazyStream, pattern, storageContract } from "./storage_contract.ts";

async function walk(dir: string, base = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    const rel = base + entry.name;
    if (entry.isDirectory) out.push(...await walk(`${dir}/${entry.name}`, rel + "/"));
    else out.push(rel);
  }
  return out;
}

/** A store in `${root}/data`, with what the contract needs to look behind it. */
function storeIn(root: string) {
  const storage = new FilesystemStorage(`${root}/data`);
  return {
    storage,
    rawKeys: async () => (await walk(`${root}/data`)).filter((k) => k !== ".tmp/.lock"),
    spoolFile: async (bytes: Uint8Array) => {
      const path = `${storage.tempDir}/spool-${crypto.randomUUID()}`;
      await Deno.writeFile(path, bytes);
      return path;
    },
  };
}

storageContract("filesystem", async () => {
  const root = await Deno.makeTempDir({ prefix: "fs-storage-" });
  const store = storeIn(root);
  return {
    ...store,
    dispose: async () => {
      await store.storage.close();
      await Deno.remove(root, { recursive: true });
    },
  };
});

// The same contract on a small real tmpfs (root only), where a full disk can be made on demand.
if (Deno.uid() === 0) {
  storageContract("filesystem on tmpfs", async () => {
    const root = await Deno.makeTempDir({ prefix: "fs-storage-tmpfs-" });
    await command("mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", root);
    const store = storeIn(root);
    return {
      ...store,
      fill: async () => {
        const path = `${root}/filler`;
        using file = await Deno.open(path, { write: true, createNew: true });
        try {
          for (const zeros = new Uint8Array(1 << 20);;) await file.write(zeros);
        } catch (e) {
          if (!/No space left/.test(String(e))) throw e;
        }
        return () => Deno.remove(path);
      },
      dispose: async () => {
        await store.storage.close();
        await command("umount", root);
        await Deno.remove(root, { recursive: true });
      },
    };
  }, { canFill: true });
} else {
  console.error("storage_filesystem_test: the tmpfs (full disk) contract run needs root; skipped");
}

async function command(name: string, ...args: string[]): Promise<void> {
  const out = await new Deno.Command(name, { args, stderr: "piped" }).output();
  if (!out.success) throw new Error(`${name}: ${new TextDecoder().decode(out.stderr)}`);
}

Deno.test("filesystem: temp files left by a crash are removed on start", async () => {
  const root = await Deno.makeTempDir({ prefix: "fs-storage-" });
  try {
    await Deno.mkdir(`${root}/.tmp/dir`, { recursive: true });
    await Deno.writeFile(`${root}/.tmp/half-written`, new Uint8Array(10));
    await Deno.writeFile(`${root}/.tmp/dir/spool`, new Uint8Array(10));
    const storage = new FilesystemStorage(root);
    try {
      assertEquals(await walk(`${root}/.tmp`), [".lock"]);
      // A second instance on the same root (another process) leaves live temp files alone.
      const path = storage.tempPath();
      await Deno.writeFile(path, new Uint8Array(1));
      const second = new FilesystemStorage(root);
      await second.close();
      assert((await Deno.stat(path)).isFile, "live temp file kept");
    } finally {
      await storage.close();
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("filesystem: a process killed mid-write leaves only a temp file, cleaned on restart", async () => {
  const root = await Deno.makeTempDir({ prefix: "fs-storage-" });
  try {
    const module = new URL("../src/storage/filesystem.ts", import.meta.url).href;
    const script = `
      import { FilesystemStorage } from ${JSON.stringify(module)};
      const storage = new FilesystemStorage(${JSON.stringify(root)});
      let n = 0;
      const endless = new ReadableStream({
        pull(c) {
          if (++n === 4) console.log("writing");
          c.enqueue(new Uint8Array(1 << 20));
        },
      });
      await storage.write("blobs/sha256/aa/never", endless);
    `;
    const child = new Deno.Command(Deno.execPath(), {
      args: ["eval", "--quiet", script],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let seen = "";
    while (!seen.includes("writing")) {
      const { done, value } = await reader.read();
      if (done) break;
      seen += value;
    }
    child.kill("SIGKILL");
    await child.status;
    await reader.cancel();
    const leftovers = (await walk(`${root}/.tmp`)).filter((k) => k !== ".lock");
    assertEquals(leftovers.length, 1, "one temp file left by the killed writer");
    const storage = new FilesystemStorage(root);
    try {
      assertEquals(await walk(root), [".tmp/.lock"]);
      assertEquals(await storage.stat("blobs/sha256/aa/never"), null);
    } finally {
      await storage.close();
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("filesystem: nothing escapes the root, and .tmp is not a key", async () => {
  const parent = await Deno.makeTempDir({ prefix: "fs-storage-" });
  const storage = new FilesystemStorage(`${parent}/root`);
  try {
    await assertRejects(() => storage.write("../outside", new Uint8Array(1)), TypeError);
    await assertRejects(() => storage.write(".tmp/x", new Uint8Array(1)), TypeError);
    await assertRejects(() => storage.readBytes(".tmp/.lock"), TypeError);
    assertEquals((await walk(parent)).sort(), ["root/.tmp/.lock"]);
  } finally {
    await storage.close();
    await Deno.remove(parent, { recursive: true });
  }
});

Deno.test("filesystem: publishFile from outside the root (rename)", async () => {
  const parent = await Deno.makeTempDir({ prefix: "fs-storage-" });
  const storage = new FilesystemStorage(`${parent}/root`);
  try {
    const bytes = pattern(3 << 20, 99);
    const path = `${parent}/elsewhere.bin`;
    await Deno.writeFile(path, bytes);
    const key = blobKey(digestOf(bytes));
    await storage.publishFile(key, path, { size: bytes.byteLength });
    assertEquals(await storage.readBytes(key), bytes);
    await assertRejects(() => Deno.stat(path), Deno.errors.NotFound);
  } finally {
    await storage.close();
    await Deno.remove(parent, { recursive: true });
  }
});

Deno.test({
  name: "filesystem: publishFile from another filesystem (copy, then rename)",
  ignore: !isOtherFilesystem("/dev/shm"),
  fn: async () => {
    const parent = await Deno.makeTempDir({ prefix: "fs-storage-" });
    const storage = new FilesystemStorage(`${parent}/root`);
    const path = `/dev/shm/fs-storage-${crypto.randomUUID()}`;
    try {
      const bytes = pattern(3 << 20, 98);
      await Deno.writeFile(path, bytes);
      const key = blobKey(digestOf(bytes));
      await storage.publishFile(key, path, { digest: digestOf(bytes) });
      assertEquals(await storage.readBytes(key), bytes);
      await assertRejects(() => Deno.stat(path), Deno.errors.NotFound);
      assertEquals(await walk(`${parent}/root/.tmp`), [".lock"]);
    } finally {
      await storage.close();
      await Deno.remove(parent, { recursive: true });
      await Deno.remove(path).catch(() => {});
    }
  },
});

function isOtherFilesystem(path: string): boolean {
  try {
    return Deno.statSync(path).dev !== Deno.statSync("/tmp").dev;
  } catch {
    return false;
  }
}

Deno.test("filesystem: reads use large chunks", async () => {
  const root = await Deno.makeTempDir({ prefix: "fs-storage-" });
  const storage = new FilesystemStorage(root);
  try {
    const data = lazyStream(8 << 20, 1 << 20, 5);
    const key = blobKey(await data.digest());
    await storage.write(key, data.stream());
    const object = await storage.read(key);
    let chunks = 0;
    for await (const _ of object!.body) chunks++;
    assert(chunks <= 8, `8 MiB came in ${chunks} chunks`);
  } finally {
    await storage.close();
    await Deno.remove(root, { recursive: true });
  }
});
