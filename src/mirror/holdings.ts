/**
 * Which mirrored repository may serve which digest.
 *
 * Content is shared by digest in storage but served per repository: a blob or a manifest by
 * digest is served for a repository only when that repository holds it, that is when a manifest
 * served for it names the digest, or upstream confirmed it for that repository (it was fetched
 * from there, or a HEAD said so). Otherwise a digest cached from a private upstream would be
 * served under any name (`/v2/x/blobs/<digest>?ns=anything`). What a repository holds is kept
 * in memory (warm GETs cost nothing more) and recorded as an empty link in storage when it came
 * from upstream, so that after a restart an offline upstream does not stop pulls by digest.
 */
import type { LogFn } from "../runtime/log.ts";
import { referencedDigests } from "../oci/manifest.ts";
import { mirroredLinkKey } from "../storage/layout.ts";
import type { Storage } from "../storage/storage.ts";
import { LruCache } from "./lru.ts";
import type { StoreHealth } from "./store_health.ts";
import { describe } from "./upstream_port.ts";

/** Repository/digest pairs known to be held (about 150 bytes each: ~30 MB at most). */
const HELD_ENTRIES = 200_000;
const EMPTY = new Uint8Array(0);

/** The key of a repository's hold on a digest: `namespace/repository@digest`. */
export function heldKey(namespace: string, repository: string, digest: string): string {
  return `${namespace}/${repository}@${digest}`;
}

export class Holdings {
  readonly #storage: Storage;
  readonly #health: StoreHealth;
  readonly #log: LogFn;
  /** `namespace/repository@digest` for content the repository holds (see the top comment). */
  readonly #held = new LruCache<true>(HELD_ENTRIES);

  constructor(context: { storage: Storage; health: StoreHealth; log: LogFn }) {
    this.#storage = context.storage;
    this.#health = context.health;
    this.#log = context.log;
  }

  /** Whether memory (no storage request) says the repository holds the digest. */
  has(key: string): boolean {
    return this.#held.get(key) === true;
  }

  /**
   * Notes that the repository holds `manifest` and what it names; `record` (fresh from
   * upstream) also writes the links, best effort: a full store only costs a HEAD later.
   */
  async holdManifest(
    namespace: string,
    repository: string,
    manifest: { digest: string; bytes: Uint8Array },
    record: boolean,
  ): Promise<void> {
    const key = heldKey(namespace, repository, manifest.digest);
    if (!record && this.#held.get(key)) return;
    const digests = [manifest.digest, ...referencedDigests(manifest.bytes)];
    for (const digest of digests) this.#held.set(heldKey(namespace, repository, digest), true);
    if (record) await Promise.all(digests.map((d) => this.#writeLink(namespace, repository, d)));
  }

  /**
   * Throws unless the repository holds `digest`: known in memory, linked in storage, or
   * confirmed by upstream now with `askUpstream`, a HEAD for this repository (its 404 is the
   * client's 404).
   */
  async confirm(
    namespace: string,
    repository: string,
    digest: string,
    askUpstream: () => Promise<void>,
  ): Promise<void> {
    if (await this.known(namespace, repository, digest)) return;
    await askUpstream();
    await this.hold(namespace, repository, digest);
  }

  /** Held according to memory or, after a restart, to the link in storage. */
  async known(namespace: string, repository: string, digest: string): Promise<boolean> {
    const key = heldKey(namespace, repository, digest);
    if (this.#held.get(key)) return true;
    if (!await this.#storage.stat(mirroredLinkKey(namespace, repository, digest))) return false;
    this.#held.set(key, true);
    return true;
  }

  /** Notes that upstream confirmed the digest for the repository, and links it in storage. */
  async hold(namespace: string, repository: string, digest: string): Promise<void> {
    this.#held.set(heldKey(namespace, repository, digest), true);
    await this.#writeLink(namespace, repository, digest);
  }

  async #writeLink(namespace: string, repository: string, digest: string): Promise<void> {
    await this.#health.write(
      `link ${namespace}/${repository}@${digest} not recorded`,
      () => this.#storage.write(mirroredLinkKey(namespace, repository, digest), EMPTY),
    ).catch((e) => this.#log(`link ${namespace}/${repository}@${digest}: ${describe(e)}`));
  }
}
