import { Pool } from 'undici';
import { z } from 'zod';
import { breakerConfigSchema } from './breaker.js';
import type { Worker } from '../fleet/fleet.js';
import { retryConfigSchema } from './retry.js';

/**
 * Upstream connection settings. Generations can take minutes before the first
 * byte (long prompts, queues) and between chunks, so the defaults never cut a
 * healthy generation short: 5 s to connect, 10 min to the response head,
 * 5 min of silence inside a body (0 disables it), and a retry/breaker policy
 * that acts only on failures the client has not seen yet.
 */
export const upstreamConfigSchema = z.strictObject({
  connectTimeoutMs: z.number().int().min(1).default(5_000),
  /** Time from sending the request to the worker's response head. */
  headersTimeoutMs: z.number().int().min(0).default(600_000),
  /** Longest silence between two body chunks (the first included); 0 disables it. */
  bodyTimeoutMs: z.number().int().min(0).default(300_000),
  keepAliveTimeoutMs: z.number().int().min(1).default(60_000),
  /** Connections per worker; unset means unlimited. */
  connections: z.number().int().min(1).optional(),
  retry: retryConfigSchema.prefault({}),
  breaker: breakerConfigSchema.prefault({}),
  /** Forward the client's `Authorization` to workers without an `apiKey` (gateway/proxy/upstream-auth.ts); off: the gateway holds the keys. */
  passClientAuthorization: z.boolean().default(false),
});
export type UpstreamConfig = z.infer<typeof upstreamConfigSchema>;

/** One keep-alive undici `Pool` per worker object (a worker re-added under the same id gets a new one). */
export class Transport {
  readonly #pools = new Map<Worker, { pool: Pool; basePath: string }>();
  readonly config: UpstreamConfig;

  constructor(workers: readonly Worker[], config: UpstreamConfig) {
    this.config = config;
    for (const w of workers) this.add(w);
  }

  /** Opens the worker's pool (idempotent). */
  add(worker: Worker): void {
    if (this.#pools.has(worker)) return;
    const c = this.config;
    const url = new URL(worker.url);
    const pool = new Pool(url.origin, {
      connections: c.connections ?? null,
      headersTimeout: c.headersTimeoutMs,
      bodyTimeout: c.bodyTimeoutMs,
      keepAliveTimeout: c.keepAliveTimeoutMs,
      connect: { timeout: c.connectTimeoutMs },
    });
    this.#pools.set(worker, { pool, basePath: url.pathname.replace(/\/+$/, '') });
  }

  get(worker: Worker): { pool: Pool; basePath: string } {
    let p = this.#pools.get(worker);
    // Only a request routed in the instant its worker was drained can miss: give it a pool rather than crash; close() ends it.
    if (p === undefined) {
      this.add(worker);
      p = this.#pools.get(worker)!;
    }
    return p;
  }

  /** Closes a drained worker's pool: waits for its requests up to `graceMs`, then cuts them. */
  async remove(worker: Worker, graceMs = 5_000): Promise<void> {
    const p = this.#pools.get(worker);
    if (p === undefined) return;
    this.#pools.delete(worker);
    let timer: NodeJS.Timeout | undefined;
    const cut = new Promise<'cut'>((resolve) => (timer = setTimeout(() => resolve('cut'), graceMs)));
    const outcome = await Promise.race([
      p.pool.close().then(
        () => 'closed' as const,
        () => 'closed' as const,
      ),
      cut,
    ]);
    clearTimeout(timer);
    if (outcome === 'cut') await p.pool.destroy().catch(() => undefined);
  }

  async close(): Promise<void> {
    const pools = [...this.#pools.values()];
    this.#pools.clear();
    await Promise.all(pools.map(({ pool }) => pool.destroy()));
  }
}
