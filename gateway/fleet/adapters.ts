import type { Logger } from 'pino';
import { z } from 'zod';
import type { Fleet, Worker } from './fleet.js';
import type { Transport } from '../proxy/forward.js';
import { withWorkerAuth } from '../proxy/upstream-auth.js';

/** LoRA adapters across the fleet (runtime loading: gateway/ops/lora-admin.ts). */
export const loraConfigSchema = z.strictObject({
  /**
   * How often every worker's `/v1/models` is read for the adapters it has
   * loaded (someone may load one on a worker directly); 0 turns the interval
   * off. Changes made through the admin port are picked up at once either way.
   */
  refreshIntervalMs: z.number().int().min(0).default(15_000),
  /** One worker call (`/v1/models`, load, unload); loading an adapter reads its weights, so allow for it. */
  timeoutMs: z.number().int().min(1).default(30_000),
});
export type LoraConfig = z.infer<typeof loraConfigSchema>;

/** What routing asks about adapters (gateway/routing/pipeline.ts). */
export interface AdapterRouting {
  /** Available workers that have `model` loaded as an adapter; undefined when `model` is not an adapter name. */
  candidates(model: string): readonly Worker[] | undefined;
  /** Does any member (healthy or not) have the adapter loaded? */
  loadedAnywhere(model: string): boolean;
}

export interface FleetAdaptersDeps {
  fleet: Fleet;
  transport: Transport;
  log: Logger;
  config: LoraConfig;
  /** Adapters named in `models.*.loras`, by name -> base model: known before any worker is asked. */
  configured?: ReadonlyMap<string, string>;
}

interface ModelCard {
  id?: unknown;
  parent?: unknown;
}

/**
 * Which worker has which LoRA adapter loaded, as each worker's `/v1/models`
 * says (vLLM lists an adapter with `parent` = its base model). Until a worker
 * has answered once, the static config stands for it: a worker whose
 * `models` lists the adapter has it.
 */
export class FleetAdapters implements AdapterRouting {
  readonly #d: FleetAdaptersDeps;
  /** worker id -> adapter name -> base model, for workers that answered. */
  readonly #byWorker = new Map<string, Map<string, string>>();
  /** Every adapter name ever configured or seen, with its base model: the names routing treats as adapters. */
  readonly #known = new Map<string, string>();
  #cache = new Map<string, readonly Worker[]>();
  #cacheFor: readonly Worker[] | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(deps: FleetAdaptersDeps) {
    this.#d = deps;
    for (const [name, base] of deps.configured ?? []) this.#known.set(name, base);
  }

  start(): void {
    const every = this.#d.config.refreshIntervalMs;
    if (every > 0) this.#timer = setInterval(() => void this.refresh(), every).unref();
  }

  close(): void {
    clearInterval(this.#timer);
  }

  /** The base model of an adapter name, or undefined when it is not one. */
  parentOf(name: string): string | undefined {
    return this.#known.get(name);
  }

  /** Does the worker have the adapter loaded? undefined when the worker never answered. */
  holds(workerId: string, adapter: string): boolean | undefined {
    return this.#byWorker.get(workerId)?.has(adapter);
  }

  candidates(model: string): readonly Worker[] | undefined {
    if (!this.#known.has(model)) return undefined;
    const healthy = this.#d.fleet.healthy;
    if (healthy !== this.#cacheFor) {
      this.#cache = new Map();
      this.#cacheFor = healthy;
    }
    let list = this.#cache.get(model);
    if (!list) this.#cache.set(model, (list = healthy.filter((w) => this.#has(w, model))));
    return list;
  }

  loadedAnywhere(model: string): boolean {
    return this.#known.has(model) && this.#d.fleet.workers.some((w) => this.#has(w, model));
  }

  /** `/debug/workers`-style view: per worker, its adapters (null: not asked yet). */
  snapshot(): { adapters: Record<string, string>; workers: Record<string, string[] | null> } {
    const workers: Record<string, string[] | null> = {};
    for (const w of this.#d.fleet.workers) {
      const m = this.#byWorker.get(w.id);
      workers[w.id] = m ? [...m.keys()].sort() : null;
    }
    return { adapters: Object.fromEntries(this.#known), workers };
  }

  /**
   * Reads `/v1/models` of the given workers (default: every healthy one) and
   * records their adapters. A worker that does not answer keeps its last view.
   */
  async refresh(workers: readonly Worker[] = this.#d.fleet.healthy): Promise<void> {
    await Promise.all(workers.map((w) => this.#refreshOne(w)));
    const members = new Set(this.#d.fleet.workers.map((w) => w.id));
    for (const id of this.#byWorker.keys()) if (!members.has(id)) this.#byWorker.delete(id);
    this.#cache = new Map();
  }

  async #refreshOne(w: Worker): Promise<void> {
    try {
      const { pool, basePath } = this.#d.transport.get(w);
      const res = await pool.request({
        path: `${basePath}/v1/models`,
        method: 'GET',
        headers: withWorkerAuth(w, {}),
        signal: AbortSignal.timeout(this.#d.config.timeoutMs),
      });
      if (res.statusCode !== 200) {
        await res.body.dump();
        return;
      }
      const body = (await res.body.json()) as { data?: unknown };
      if (!Array.isArray(body.data)) return;
      const adapters = new Map<string, string>();
      for (const card of body.data as ModelCard[]) {
        if (typeof card?.id !== 'string' || typeof card.parent !== 'string' || card.parent === card.id) continue;
        adapters.set(card.id, card.parent);
        this.#known.set(card.id, card.parent);
      }
      this.#byWorker.set(w.id, adapters);
    } catch (err) {
      this.#d.log.debug({ worker: w.id, error: (err as Error).message }, 'adapter refresh failed');
    }
  }

  #has(w: Worker, model: string): boolean {
    return this.#byWorker.get(w.id)?.has(model) ?? w.models.includes(model);
  }
}
