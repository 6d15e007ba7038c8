/**
 * Minimal assertions (JSR's @std/assert is unreachable here, so the project carries its own).
 */
import { deepStrictEqual } from "node:assert";

export class AssertionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AssertionError";
  }
}

export function assert(condition: unknown, message = "assertion failed"): asserts condition {
  if (!condition) throw new AssertionError(message);
}

export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  if (actual instanceof Uint8Array && expected instanceof Uint8Array) {
    // node:assert would diff megabytes element by element: gigabytes of memory for a failure.
    const difference = bytesDifference(actual, expected);
    if (difference) throw new AssertionError(message ? `${message}\n${difference}` : difference);
    return;
  }
  try {
    deepStrictEqual(actual, expected);
  } catch (e) {
    throw new AssertionError(
      message ? `${message}\n${(e as Error).message}` : (e as Error).message,
    );
  }
}

/** Where two byte arrays differ, in a few words; null when they are equal. */
function bytesDifference(actual: Uint8Array, expected: Uint8Array): string | null {
  const common = Math.min(actual.byteLength, expected.byteLength);
  let at = 0;
  while (at < common && actual[at] === expected[at]) at++;
  if (at === common && actual.byteLength === expected.byteLength) return null;
  const hex = (bytes: Uint8Array) =>
    Array.from(bytes.subarray(at, at + 16), (b) => b.toString(16).padStart(2, "0")).join(" ");
  return `bytes differ: actual ${actual.byteLength} bytes, expected ${expected.byteLength}; ` +
    `first difference at offset ${at} (actual: ${hex(actual) || "end"}; expected: ${
      hex(expected) || "end"
    })`;
}

export function assertNotEquals<T>(actual: T, expected: T, message?: string): void {
  let equal = true;
  try {
    deepStrictEqual(actual, expected);
  } catch {
    equal = false;
  }
  if (equal) {
    throw new AssertionError(message ?? `expected a value other than ${Deno.inspect(expected)}`);
  }
}

export function assertMatch(actual: string, pattern: RegExp, message?: string): void {
  if (!pattern.test(actual)) {
    throw new AssertionError(message ?? `expected ${JSON.stringify(actual)} to match ${pattern}`);
  }
}

// deno-lint-ignore no-explicit-any
type Constructor<E> = new (...args: any[]) => E;

export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  type?: Constructor<E>,
  includes?: string,
): E {
  try {
    fn();
  } catch (e) {
    checkError(e, type, includes);
    return e as E;
  }
  throw new AssertionError("expected function to throw");
}

export async function assertRejects<E extends Error = Error>(
  fn: () => Promise<unknown>,
  type?: Constructor<E>,
  includes?: string,
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    checkError(e, type, includes);
    return e as E;
  }
  throw new AssertionError("expected promise to reject");
}

function checkError(e: unknown, type?: Constructor<Error>, includes?: string): void {
  if (type && !(e instanceof type)) {
    throw new AssertionError(`expected ${type.name}, got ${Deno.inspect(e)}`);
  }
  if (includes && !(e as Error).message.includes(includes)) {
    throw new AssertionError(
      `expected message to include ${JSON.stringify(includes)}: ${(e as Error).message}`,
    );
  }
}
