/**
 * What the parts of the pull-through cache share (Mirror builds it once): the store and its
 * health, the counting upstream and the namespaces' settings, the size bound, log and clock.
 */
import type { UpstreamRegistry } from "../config/upstreams.ts";
import type { LogFn } from "../runtime/log.ts";
import type { CacheResult } from "../registry/registry.ts";
import type { Storage } from "../storage/storage.ts";
import type { CacheBound } from "./bound.ts";
import type { StoreHealth } from "./store_health.ts";
import type { Upstream } from "./upstream_port.ts";

export interface MirrorContext {
  storage: Storage;
  health: StoreHealth;
  /** Every request made to it is counted (see countingUpstream). */
  upstream: Upstream;
  upstreams: UpstreamRegistry;
  /** The cache size bound, told what is stored and read (absent: the cache only grows). */
  bound: CacheBound | undefined;
  log: LogFn;
  now: () => number;
  /** Counts a lookup's result, and hands it back for the response to say (X-Cache). */
  count(namespace: string, kind: "manifest" | "blob", result: CacheResult): CacheResult;
}
