import { z } from 'zod';
import type { WorkerView } from '../strategies/strategy.js';

/**
 * A named subset of the fleet, by worker labels (every given label must be equal)
 * or by worker ids. Policies and experiments may restrict routing to one pool.
 */
export const poolConfigSchema = z
  .strictObject({
    /** Label selector, e.g. `{gpu: h100}`: workers carrying all of these labels. */
    labels: z.record(z.string().min(1), z.string()).optional(),
    /** Worker ids. */
    workers: z.array(z.string().min(1)).min(1).optional(),
  })
  .refine((p) => (p.labels === undefined) !== (p.workers === undefined), {
    message: 'a pool needs exactly one of labels or workers',
  })
  .refine((p) => p.labels === undefined || Object.keys(p.labels).length > 0, {
    message: 'labels must name at least one label',
  });
export type PoolConfig = z.infer<typeof poolConfigSchema>;

/** A problem that needs the fleet to see (an empty pool, an unknown worker id); `path` is relative to `routing`. */
export class PoolError extends Error {
  override name = 'PoolError';
  constructor(
    readonly path: (string | number)[],
    message: string,
  ) {
    super(message);
  }
}

/**
 * A resolved pool. `filter` narrows a candidate list (healthy workers of a model)
 * to the pool's members; the fleet hands out the same array until health changes,
 * so the narrowed list is cached per input array and routing allocates nothing.
 */
export class Pool {
  readonly #cache = new WeakMap<readonly WorkerView[], readonly WorkerView[]>();

  constructor(
    readonly name: string,
    readonly members: ReadonlySet<string>,
  ) {}

  filter<W extends WorkerView>(candidates: readonly W[]): readonly W[] {
    let out = this.#cache.get(candidates) as readonly W[] | undefined;
    if (out === undefined) {
      out = candidates.filter((w) => this.members.has(w.id));
      this.#cache.set(candidates, out);
    }
    return out;
  }
}

/** Resolves every pool against the configured workers; an empty pool or an unknown id is an error. */
export function resolvePools(
  pools: Readonly<Record<string, PoolConfig>>,
  workers: readonly Pick<WorkerView, 'id' | 'labels'>[],
): Map<string, Pool> {
  const out = new Map<string, Pool>();
  const ids = new Set(workers.map((w) => w.id));
  for (const [name, p] of Object.entries(pools)) {
    let members: string[];
    if (p.workers) {
      const unknown = p.workers.find((id) => !ids.has(id));
      if (unknown !== undefined)
        throw new PoolError(
          ['pools', name, 'workers'],
          `unknown worker '${unknown}' (workers: ${[...ids].join(', ')})`,
        );
      members = p.workers;
    } else {
      const want = Object.entries(p.labels!);
      members = workers.filter((w) => want.every(([k, v]) => w.labels[k] === v)).map((w) => w.id);
      if (members.length === 0) {
        const sel = want.map(([k, v]) => `${k}=${v}`).join(', ');
        throw new PoolError(
          ['pools', name, 'labels'],
          `no worker has labels ${sel}; an empty pool could never serve a request`,
        );
      }
    }
    out.set(name, new Pool(name, new Set(members)));
  }
  return out;
}
