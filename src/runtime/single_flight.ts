/**
 * One piece of work per key at a time: callers that ask for a key while its work runs share
 * its promise (and its failure) instead of starting their own. The key is free again as soon
 * as the work settles; nothing is cached beyond that.
 */
export class SingleFlight<V> {
  readonly #running = new Map<string, Promise<V>>();

  run(key: string, work: () => Promise<V>): Promise<V> {
    const running = this.#running.get(key);
    if (running) return running;
    const flight = work().finally(() => this.#running.delete(key));
    this.#running.set(key, flight);
    return flight;
  }

  /** Keys whose work is running. */
  get size(): number {
    return this.#running.size;
  }
}
