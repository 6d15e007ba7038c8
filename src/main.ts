/**
 * Entry point: command line + environment -> settings -> the command (serve, gc, warm).
 * Configuration problems print one clear line and exit 2; nothing here prints secrets.
 */
import { versionLine } from "./runtime/build_info.ts";
import { parseCommandLine, type Settings } from "./config/cli.ts";
import { ConfigError, loadConfigFile, type UpstreamRegistry } from "./config/upstreams.ts";
import { combineHosted } from "./config/hosted.ts";
import { AccessControl } from "./config/access.ts";
import { tokenKey } from "./http/token.ts";
import { createLog } from "./runtime/log.ts";
import { gcCommand } from "./commands/gc.ts";
import { serve, type ServeOptions } from "./commands/serve.ts";
import { warmCommand } from "./commands/warm.ts";

export { VERSION } from "./runtime/build_info.ts";

async function main(): Promise<number> {
  let options: ServeOptions;
  try {
    const parsed = parseCommandLine(Deno.args, (name) => Deno.env.get(name));
    if (parsed.kind === "help") {
      console.log(parsed.text);
      return 0;
    }
    if (parsed.kind === "version") {
      console.log(versionLine());
      return 0;
    }
    if (parsed.kind === "warm") return await warmCommand(parsed);
    const { settings, upstreams } = await withConfigFile(parsed.settings);
    if (parsed.kind === "gc") return await gcCommand(settings, parsed.delete, parsed.minAgeMs);
    const log = createLog({ format: settings.logFormat, level: settings.logLevel });
    options = { settings, upstreams, log };
    if (settings.authConfigFile) {
      const access = await AccessControl.load(settings.authConfigFile, {
        // An upstream the mirror logs in to is private: its content needs a user by default.
        isPrivate: (namespace) => upstreams.get(namespace).username !== undefined,
        log,
      });
      const signingKey = await tokenKey(access.token.secretFile).catch((e) => {
        throw new ConfigError(`token secret: ${(e as Error).message}`);
      });
      options.auth = { access, signingKey };
    }
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(`oci-registry: ${e.message}`);
      return 2;
    }
    throw e;
  }
  return await serve(options);
}

/** The settings completed by the upstream file: its upstreams, and its hosted names. */
async function withConfigFile(
  settings: Settings,
): Promise<{ settings: Settings; upstreams: UpstreamRegistry }> {
  const file = await loadConfigFile(
    settings.upstreamConfigFile,
    Deno.env.get("UPSTREAM_CREDENTIALS"),
  );
  // The file's hosted names count for gc too: it must honour every hosted repository's links.
  const hosted = combineHosted(
    settings.hosted,
    settings.upstreamConfigFile
      ? { source: settings.upstreamConfigFile, names: file.hosted }
      : undefined,
    settings.defaultNamespace,
    file.upstreams,
  );
  return { settings: { ...settings, hosted }, upstreams: file.upstreams };
}

if (import.meta.main) {
  Deno.exit(await main());
}
