/** Byte sizes on the command line: `1073741824`, `50GiB`, `500MB`, or `80%` of a filesystem. */
import { ConfigError } from "./upstreams.ts";

const UNITS: Record<string, number> = {
  "": 1,
  b: 1,
  k: 1e3,
  kb: 1e3,
  m: 1e6,
  mb: 1e6,
  g: 1e9,
  gb: 1e9,
  t: 1e12,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

/** A size bound: absolute bytes, or a share of the filesystem that holds the cache. */
export type SizeBound = { bytes: number } | { percent: number };

export function parseSizeBound(value: string, flag: string): SizeBound {
  const text = value.trim();
  const percent = /^(\d+(?:\.\d+)?)\s*%$/.exec(text);
  if (percent) {
    const p = Number(percent[1]);
    if (p <= 0 || p > 100) throw new ConfigError(`${flag}: a percentage must be in (0, 100]`);
    return { percent: p };
  }
  const match = /^(\d+(?:\.\d+)?)\s*([a-zA-Z]*)$/.exec(text);
  const unit = match ? UNITS[match[2].toLowerCase()] : undefined;
  if (!match || unit === undefined) {
    throw new ConfigError(
      `${flag}: expected a size such as 50GiB, 500MB, 1073741824 or 80%; got "${value}"`,
    );
  }
  const bytes = Math.floor(Number(match[1]) * unit);
  if (bytes <= 0) throw new ConfigError(`${flag} must be larger than 0`);
  return { bytes };
}

/** Total bytes of the filesystem holding `path` (`df`, since Deno has no statfs). */
export async function filesystemBytes(path: string): Promise<number> {
  const output = await new Deno.Command("df", {
    args: ["-B1", "--output=size", path],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const size = Number(new TextDecoder().decode(output.stdout).trim().split("\n").pop());
  if (!output.success || !Number.isSafeInteger(size) || size <= 0) {
    throw new ConfigError(`cannot tell the size of the filesystem holding ${path}`);
  }
  return size;
}
