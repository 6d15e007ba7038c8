/**
 * The process log: one line per call, written to stdout in the background. console.log blocks
 * the event loop until a slow log reader (a container runtime's pipe, a full terminal) takes
 * the line, which at thousands of requests a second throttled the whole server. Lines are
 * batched instead and written asynchronously; if the reader falls more than MAX_PENDING bytes
 * behind, further lines are dropped and counted, and the count is logged once it catches up.
 */

const MAX_PENDING = 1 << 20;
const encoder = new TextEncoder();

export function createLog(
  write: (bytes: Uint8Array) => Promise<number> = (bytes) => Deno.stdout.write(bytes),
): ((line: string) => void) & { flush(): Promise<void> } {
  let pending: string[] = [];
  let pendingBytes = 0;
  let dropped = 0;
  let writing: Promise<void> | undefined;

  const drain = async () => {
    while (pending.length > 0) {
      const text = pending.join("");
      pending = [];
      pendingBytes = 0;
      const bytes = encoder.encode(text);
      let offset = 0;
      try {
        while (offset < bytes.byteLength) offset += await write(bytes.subarray(offset));
      } catch {
        return; // stdout closed: nothing more can be said
      }
      if (dropped > 0) {
        pending.push(`log: ${dropped} lines dropped (log reader too slow)\n`);
        dropped = 0;
      }
    }
  };

  const log = (line: string) => {
    if (pendingBytes > MAX_PENDING) {
      dropped++;
      return;
    }
    pending.push(line.endsWith("\n") ? line : `${line}\n`);
    pendingBytes += line.length + 1;
    writing ??= Promise.resolve().then(drain).finally(() => writing = undefined);
  };
  return Object.assign(log, {
    /** Resolves when every line logged so far is written. */
    async flush() {
      while (writing) await writing;
    },
  });
}
