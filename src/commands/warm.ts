/** `oci-registry warm IMAGE...`: each image pulled through a running mirror, a line each. */
import { describeWarm, httpSource, warmImage } from "../mirror/warm.ts";
import { parseImageName } from "../oci/reference.ts";

export async function warmCommand(
  command: { mirror: string; platforms?: string[]; images: string[] },
): Promise<number> {
  let failed = 0;
  // A mirror with --auth-config: the user's credentials, sent as Basic on every request.
  const user = Deno.env.get("MIRROR_USERNAME");
  const authorization = user === undefined ? undefined : `Basic ${
    btoa(String.fromCharCode(
      ...new TextEncoder().encode(`${user}:${Deno.env.get("MIRROR_PASSWORD") ?? ""}`),
    ))
  }`;
  for (const name of command.images) {
    const started = performance.now();
    try {
      const { registry, repository, reference } = parseImageName(name);
      const result = await warmImage(httpSource(command.mirror, registry, authorization), {
        repository,
        reference,
        platforms: command.platforms,
      });
      console.log(`${name}: ok, ${describeWarm(result, performance.now() - started)}`);
    } catch (e) {
      failed++;
      console.log(`${name}: failed: ${(e as Error)?.message ?? e}`);
    }
  }
  const warmed = command.images.length - failed;
  console.log(`warmed ${warmed} of ${command.images.length} image(s) through ${command.mirror}`);
  return failed === 0 ? 0 : 1;
}
