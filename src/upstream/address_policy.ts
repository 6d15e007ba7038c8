/**
 * SSRF protection for implicit upstreams. Any client can name an upstream with `?ns=<host>`;
 * without this check the mirror would fetch from its own loopback, the cloud metadata service
 * or the private network on the client's behalf. Operator-configured upstreams are trusted and
 * never checked.
 *
 * Host names are resolved with the system resolver (node:dns `lookup`, i.e. getaddrinfo, the
 * same resolver fetch connects with, so /etc/hosts counts) and refused when ANY address is not
 * a public unicast address. Decisions are cached briefly. A residual DNS-rebinding window exists
 * between this check and the connection fetch makes; the short cache keeps it small.
 */
import { lookup } from "node:dns/promises";
import { RegistryError } from "../oci/errors.ts";
import { SingleFlight } from "../runtime/single_flight.ts";

/** Resolves a host name to its IP addresses (v4 dotted quad or v6 text). */
export type Resolver = (hostname: string) => Promise<string[]>;

export interface AddressPolicyOptions {
  /** Allow loopback, private and link-local targets (development, tests). Default false. */
  allowPrivateAddresses?: boolean;
  /** How long an allow/deny decision per host is reused. Default 30 s. */
  cacheTtlMs?: number;
  /** Replaces the system resolver (tests). */
  resolve?: Resolver;
  /** Clock (tests). */
  now?: () => number;
}

const MAX_CACHE_ENTRIES = 4096;

/** Resolves with the system resolver, like fetch does. */
export const systemResolver: Resolver = async (hostname) => {
  const results = await lookup(hostname, { all: true, verbatim: true });
  return results.map((r) => r.address);
};

interface Decision {
  /** Why the host is refused, or undefined when it is allowed. */
  refusal?: string;
  expiresAt: number;
}

export class AddressPolicy {
  readonly #allowPrivate: boolean;
  readonly #ttlMs: number;
  readonly #resolve: Resolver;
  readonly #now: () => number;
  readonly #decisions = new Map<string, Decision>();
  readonly #pending = new SingleFlight<Decision>();

  constructor(options: AddressPolicyOptions = {}) {
    this.#allowPrivate = options.allowPrivateAddresses ?? false;
    this.#ttlMs = options.cacheTtlMs ?? 30_000;
    this.#resolve = options.resolve ?? systemResolver;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Throws RegistryError DENIED (403) when `url` points at a non-public address, UNAVAILABLE
   * (503) when its host cannot be resolved. `url.hostname` is already normalised by the URL
   * parser (e.g. `0x7f.1` becomes `127.0.0.1`, IPv6 is bracketed).
   */
  async check(url: URL): Promise<void> {
    if (this.#allowPrivate) return;
    const hostname = url.hostname.toLowerCase().replace(/\.$/, "");
    const cached = this.#decisions.get(hostname);
    let decision: Decision;
    if (cached && cached.expiresAt > this.#now()) {
      decision = cached;
    } else {
      decision = await this.#pending.run(hostname, () => this.#decide(hostname));
    }
    if (decision.refusal !== undefined) {
      throw new RegistryError(
        "DENIED",
        `upstream host ${hostname} is not allowed: ${decision.refusal}; only public addresses ` +
          `may be mirrored unless the upstream is configured explicitly`,
      );
    }
  }

  async #decide(hostname: string): Promise<Decision> {
    let refusal: string | undefined;
    const literal = hostname.startsWith("[") ? hostname.slice(1, -1) : hostname;
    if (parseIPv4(literal) || parseIPv6(literal)) {
      refusal = refusalFor(literal);
    } else if (hostname === "localhost" || hostname.endsWith(".localhost")) {
      refusal = "localhost";
    } else {
      let addresses: string[];
      try {
        addresses = await this.#resolve(hostname);
      } catch (e) {
        // Not cached: a resolver hiccup should not stick.
        throw new RegistryError(
          "UNAVAILABLE",
          `cannot resolve upstream host ${hostname}: ${
            (e as { code?: string }).code ?? "lookup failed"
          }`,
          { cause: e },
        );
      }
      if (addresses.length === 0) {
        throw new RegistryError("UNAVAILABLE", `cannot resolve upstream host ${hostname}`);
      }
      for (const address of addresses) {
        const reason = refusalFor(address);
        if (reason !== undefined) {
          refusal = `it resolves to ${address} (${reason})`;
          break;
        }
      }
    }
    const decision = { refusal, expiresAt: this.#now() + this.#ttlMs };
    this.#remember(hostname, decision);
    return decision;
  }

  #remember(hostname: string, decision: Decision): void {
    this.#decisions.delete(hostname);
    this.#decisions.set(hostname, decision);
    if (this.#decisions.size <= MAX_CACHE_ENTRIES) return;
    const now = this.#now();
    for (const [key, value] of this.#decisions) {
      if (value.expiresAt <= now) this.#decisions.delete(key);
    }
    // Still full: drop the oldest insertions.
    for (const key of this.#decisions.keys()) {
      if (this.#decisions.size <= MAX_CACHE_ENTRIES) break;
      this.#decisions.delete(key);
    }
  }
}

/**
 * Why an IP address may not be contacted on behalf of anonymous clients, or undefined for a
 * public unicast address. Accepts IPv4 dotted quads and IPv6 text (without brackets).
 */
export function refusalFor(address: string): string | undefined {
  const v4 = parseIPv4(address);
  if (v4) return refusalForIPv4(v4);
  const v6 = parseIPv6(address);
  if (!v6) return "not an IP address";
  return refusalForIPv6(v6);
}

function refusalForIPv4([a, b, c, d]: number[]): string | undefined {
  if (a === 0) return b === 0 && c === 0 && d === 0 ? "unspecified" : "this network";
  if (a === 127) return "loopback";
  if (a === 10) return "private";
  if (a === 172 && b >= 16 && b <= 31) return "private";
  if (a === 192 && b === 168) return "private";
  if (a === 169 && b === 254) return "link-local";
  if (a === 100 && b >= 64 && b <= 127) return "shared address space";
  if (a === 192 && b === 0 && c === 0) return "IETF protocol assignments";
  if (a === 198 && (b === 18 || b === 19)) return "benchmarking";
  if (a >= 224 && a <= 239) return "multicast";
  if (a >= 240) return a === 255 && b === 255 && c === 255 && d === 255 ? "broadcast" : "reserved";
  return undefined;
}

function refusalForIPv6(g: number[]): string | undefined {
  const zeroPrefix = (n: number) => g.slice(0, n).every((x) => x === 0);
  if (zeroPrefix(8)) return "unspecified";
  if (zeroPrefix(7) && g[7] === 1) return "loopback";
  // IPv4-mapped ::ffff:a.b.c.d and the deprecated IPv4-compatible ::a.b.c.d
  if (zeroPrefix(5) && (g[5] === 0xffff || g[5] === 0)) {
    return refusalForIPv4([g[6] >> 8, g[6] & 0xff, g[7] >> 8, g[7] & 0xff]);
  }
  // NAT64 64:ff9b::/96 embeds an IPv4 address too.
  if (g[0] === 0x64 && g[1] === 0xff9b && g.slice(2, 6).every((x) => x === 0)) {
    return refusalForIPv4([g[6] >> 8, g[6] & 0xff, g[7] >> 8, g[7] & 0xff]);
  }
  if ((g[0] & 0xffc0) === 0xfe80) return "link-local";
  if ((g[0] & 0xffc0) === 0xfec0) return "site-local";
  if ((g[0] & 0xfe00) === 0xfc00) return "unique local (private)";
  if ((g[0] & 0xff00) === 0xff00) return "multicast";
  return undefined;
}

/** Parses a strict dotted-quad IPv4 address into four octets. */
export function parseIPv4(text: string): number[] | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  const octets: number[] = [];
  for (const part of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(part)) return undefined;
    const value = Number(part);
    if (value > 255) return undefined;
    octets.push(value);
  }
  return octets;
}

/** Parses IPv6 text (with `::` and an optional trailing dotted quad) into eight 16-bit groups. */
export function parseIPv6(text: string): number[] | undefined {
  const zone = text.indexOf("%");
  if (zone >= 0) text = text.slice(0, zone);
  if (!/^[0-9a-fA-F:.]+$/.test(text) || !text.includes(":")) return undefined;
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const parseGroups = (part: string, last: boolean): number[] | undefined => {
    if (part === "") return [];
    const groups: number[] = [];
    const items = part.split(":");
    for (let i = 0; i < items.length; i++) {
      const item = items[i];
      if (last && i === items.length - 1 && item.includes(".")) {
        const v4 = parseIPv4(item);
        if (!v4) return undefined;
        groups.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
      } else if (/^[0-9a-fA-F]{1,4}$/.test(item)) {
        groups.push(parseInt(item, 16));
      } else {
        return undefined;
      }
    }
    return groups;
  };
  const head = parseGroups(halves[0], halves.length === 1);
  if (!head) return undefined;
  if (halves.length === 1) return head.length === 8 ? head : undefined;
  const tail = parseGroups(halves[1], true);
  if (!tail || head.length + tail.length > 7) return undefined;
  return [...head, ...new Array(8 - head.length - tail.length).fill(0), ...tail];
}
