import type { Logger } from 'pino';
import type { DiscoveredWorker } from './discovery/discovery.js';
import { workerConfigSchema, type Fleet, type Worker, type WorkerConfig } from './fleet.js';
import type { Transport } from '../proxy/forward.js';
import { httpHealthProbe, type HealthProbe } from './health.js';
import { configureUpstreamAuth } from '../proxy/upstream-auth.js';

/** What a worker joining or leaving means beyond the fleet and its pool (the KV event source and index). */
export interface WorkerHooks {
  added?(worker: WorkerConfig): Promise<void>;
  removed?(id: string): Promise<void>;
}

export interface FleetSyncDeps {
  readonly fleet: Fleet;
  readonly transport: Transport;
  readonly log: Logger;
  readonly healthTimeoutMs: number;
  readonly healthProbe?: HealthProbe | undefined;
  /** Longest wait for a removed worker's in-flight requests before its pool is cut. */
  readonly drainTimeoutMs: number;
  readonly hooks?: WorkerHooks | undefined;
  /** Called after every applied membership change (routing pools may need rebuilding). */
  readonly onChanged?: (() => void) | undefined;
  /** A removed worker finished draining and is gone. */
  readonly onForgotten?: ((id: string) => void) | undefined;
}

export interface FleetChange {
  added: string[];
  removed: string[];
  changed: string[];
}

/** How often a draining worker's in-flight count is looked at. */
const DRAIN_POLL_MS = 100;

/**
 * Keeps the fleet equal to what config and discovery say, one worker at a time:
 * an added worker gets a pool, a breaker, a health check (probed at once, so it
 * takes traffic as soon as it answers) and its KV event source; a removed one
 * leaves routing at once, is drained (in-flight requests finish, then its pool
 * closes) and loses its event source and index entries; a changed one (same
 * id, anything else different) is removed and added again.
 * The fleet is the union of the static list and the discovered one; a static
 * entry wins when both name the same id.
 */
export class FleetSync {
  readonly #d: FleetSyncDeps;
  #static: WorkerConfig[] = [];
  #discovered: WorkerConfig[] = [];
  /** The config each member was built from, canonical JSON, to tell a change from a no-op. */
  readonly #applied = new Map<string, string>();
  readonly #drains = new Set<Promise<void>>();
  #closed = false;

  constructor(deps: FleetSyncDeps, initial: readonly WorkerConfig[]) {
    this.#d = deps;
    this.#static = [...initial];
    for (const w of initial) this.#applied.set(w.id, key(w));
  }

  /** Ids and configs the fleet would have with this static list (for validating a reload before applying it). */
  prospective(staticWorkers: readonly WorkerConfig[]): WorkerConfig[] {
    return union(staticWorkers, this.#discovered);
  }

  get discoveredCount(): number {
    return this.#discovered.length;
  }

  /** Workers being drained right now. */
  get draining(): number {
    return this.#drains.size;
  }

  setStatic(workers: readonly WorkerConfig[]): FleetChange {
    this.#static = [...workers];
    return this.#apply();
  }

  /** A discovery source's whole current list; entries the fleet schema rejects are logged and skipped. */
  setDiscovered(workers: readonly DiscoveredWorker[]): FleetChange {
    const parsed: WorkerConfig[] = [];
    for (const w of workers) {
      const r = workerConfigSchema.safeParse(w);
      if (r.success) parsed.push(r.data);
      else this.#d.log.warn({ worker: w.id, error: r.error.issues[0]?.message }, 'discovered worker rejected');
    }
    this.#discovered = parsed;
    return this.#apply();
  }

  /** Resolves once every removed worker has finished draining. */
  async settled(): Promise<void> {
    while (this.#drains.size > 0) await Promise.all([...this.#drains]);
  }

  /** No more changes; cuts drains short (the transport is closing anyway). */
  close(): void {
    this.#closed = true;
  }

  #apply(): FleetChange {
    const desired = union(this.#static, this.#discovered);
    const want = new Map(desired.map((w) => [w.id, w]));
    const change: FleetChange = { added: [], removed: [], changed: [] };
    for (const id of [...this.#applied.keys()]) {
      if (!want.has(id)) {
        this.#remove(id);
        change.removed.push(id);
      }
    }
    for (const w of desired) {
      const before = this.#applied.get(w.id);
      if (before === key(w)) continue;
      // Key resolution first: a worker whose apiKeyEnv is unset must not join without its credential.
      const probe = { id: w.id };
      try {
        configureUpstreamAuth([probe], [w]);
      } catch (err) {
        this.#d.log.warn({ worker: w.id, error: (err as Error).message }, 'worker not added');
        continue;
      }
      if (before !== undefined) {
        this.#remove(w.id);
        change.changed.push(w.id);
      } else {
        change.added.push(w.id);
      }
      this.#add(w);
    }
    if (change.added.length + change.removed.length + change.changed.length > 0) {
      this.#d.log.info({ ...change, workers: this.#d.fleet.workers.length }, 'fleet changed');
      this.#d.onChanged?.();
    }
    return change;
  }

  #add(config: WorkerConfig): void {
    const { fleet, transport, hooks, log } = this.#d;
    const worker = fleet.add(config);
    configureUpstreamAuth([worker], [config]);
    transport.add(worker);
    this.#applied.set(config.id, key(config));
    void hooks?.added?.(config).catch((err: unknown) => log.warn({ err, worker: config.id }, 'worker hook failed'));
    // The periodic health check would find it within an interval; probing now puts it in service sooner.
    void (this.#d.healthProbe ?? httpHealthProbe)(worker, this.#d.healthTimeoutMs).then((error) => {
      worker.lastCheckAt = Date.now();
      if (fleet.setHealthy(worker, error === undefined, error))
        log.info(
          { worker: worker.id, url: worker.url, error },
          error === undefined ? 'worker healthy' : 'worker unhealthy',
        );
    });
  }

  #remove(id: string): void {
    const { fleet, hooks, log } = this.#d;
    this.#applied.delete(id);
    const worker = fleet.remove(id);
    void hooks?.removed?.(id).catch((err: unknown) => log.warn({ err, worker: id }, 'worker hook failed'));
    if (!worker) return;
    const drain = this.#drain(worker).finally(() => this.#drains.delete(drain));
    this.#drains.add(drain);
  }

  /** Waits for the worker's in-flight requests (up to the drain timeout), then closes its pool and forgets it. */
  async #drain(worker: Worker): Promise<void> {
    const started = Date.now();
    const deadline = started + this.#d.drainTimeoutMs;
    // One poll at least: a request routed in the same tick as the removal is counted only after it.
    do await new Promise((r) => setTimeout(r, DRAIN_POLL_MS));
    while (worker.load.inflightRequests > 0 && Date.now() < deadline && !this.#closed);
    const left = worker.load.inflightRequests;
    if (left > 0)
      this.#d.log.warn({ worker: worker.id, inflight: left }, "drain timeout: cutting the worker's requests");
    await this.#d.transport.remove(worker, left > 0 ? 0 : 1000);
    this.#d.fleet.forget(worker);
    this.#d.onForgotten?.(worker.id);
    this.#d.log.info({ worker: worker.id, ms: Date.now() - started }, 'worker drained');
  }
}

function union(staticWorkers: readonly WorkerConfig[], discovered: readonly WorkerConfig[]): WorkerConfig[] {
  const ids = new Set(staticWorkers.map((w) => w.id));
  return [...staticWorkers, ...discovered.filter((w) => !ids.has(w.id))];
}

/** Key order of a parsed config is the schema's, so JSON compares two configs of one worker. */
function key(w: WorkerConfig): string {
  return JSON.stringify(w);
}
