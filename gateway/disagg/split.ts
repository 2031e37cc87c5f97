import type { Fleet, Worker } from '../fleet/fleet.js';
import type { Pool } from '../routing/policies/pools.js';
import type { CandidateSplit } from '../routing/pipeline.js';
import type { DisaggConfig } from './config.js';
import type { PoolWorkers } from './planner.js';

/** The prefill side (`role: prefill`) and the decode side (`decode`, `both`) of a candidate list. */
export function splitRoles<W extends { readonly role: string }>(
  candidates: readonly W[],
): { prefill: readonly W[]; decode: readonly W[] } {
  const prefill = candidates.filter((w) => w.role === 'prefill');
  const decode = candidates.filter((w) => w.role !== 'prefill');
  // No decode-capable worker left: a prefill worker can still serve whole requests (vLLM kv_both).
  return { prefill, decode: decode.length > 0 ? decode : prefill };
}

/**
 * Which routing pools are P/D-split: those whose members (the model's whole
 * fleet when there is no pool) include prefill workers and decode-capable
 * ones, counted over configured members, not only available ones, so a pool
 * whose prefill workers are all down still reports its requests as aggregated.
 * The pipeline narrows such a pool to its decode side before the strategy
 * chooses (gateway/routing/pipeline.ts); the planner reads the membership.
 * Answers are kept until the fleet's membership changes (discovery may add
 * the first prefill worker later).
 */
export class PdSplit {
  readonly #config: DisaggConfig;
  readonly #fleet: Fleet;
  readonly #splits = new Map<string, boolean>();
  readonly #poolMembers = new Map<string, readonly Worker[]>();
  #members: readonly Worker[] | undefined;

  constructor(config: DisaggConfig, fleet: Fleet) {
    this.#config = config;
    this.#fleet = fleet;
  }

  /** The pipeline's `split` hook. */
  readonly split: CandidateSplit = (model, pool, candidates) =>
    this.isSplit(model, pool) ? splitRoles(candidates) : undefined;

  isSplit(model: string, pool: Pool | undefined): boolean {
    if (!this.#config.enabled) return false;
    if (this.#fleet.workers !== this.#members) {
      this.#members = this.#fleet.workers;
      this.#splits.clear();
      this.#poolMembers.clear();
    }
    const key = `${model}\0${pool?.name ?? ''}`;
    let yes = this.#splits.get(key);
    if (yes === undefined) {
      const members = this.#fleet.workers.filter((w) => w.models.includes(model) && (!pool || pool.members.has(w.id)));
      yes = members.some((w) => w.role === 'prefill') && members.some((w) => w.role !== 'prefill');
      this.#splits.set(key, yes);
      const name = pool?.name ?? 'default';
      if (yes) this.#poolMembers.set(name, [...(this.#poolMembers.get(name) ?? []), ...members]);
    }
    return yes;
  }

  /** Worker counts by role of a split pool, for the planner. */
  poolWorkers(pool: string): PoolWorkers {
    const members = new Set(this.#poolMembers.get(pool) ?? []);
    const out = { prefill: 0, decode: 0, both: 0 };
    for (const w of members) out[w.role]++;
    return out;
  }
}
