import type { Logger } from 'pino';
import { z } from 'zod';
import type { BreakerConfig } from '../proxy/breaker.js';
import type { WorkerLoad } from '../routing/strategies/strategy.js';
import { discoveryConfigSchema } from './discovery/discovery.js';
import type { PrefillEntry, TicketPrompt } from './active-sequences.js';
import { Worker, addLoad, workerConfigSchema, type WorkerConfig } from './worker.js';

export { Worker, workerConfigSchema, type WorkerConfig } from './worker.js';

export const healthConfigSchema = z.strictObject({
  /** How often each worker's `GET /health` is polled. */
  intervalMs: z.number().int().min(50).default(2000),
  timeoutMs: z.number().int().min(10).default(1000),
  /** Consecutive failures before a healthy worker is taken out. */
  unhealthyThreshold: z.number().int().min(1).default(2),
  /** Consecutive successes before an unhealthy worker is put back. */
  healthyThreshold: z.number().int().min(1).default(1),
});

export const fleetConfigSchema = z
  .strictObject({
    health: healthConfigSchema.default({
      intervalMs: 2000,
      timeoutMs: 1000,
      unhealthyThreshold: 2,
      healthyThreshold: 1,
    }),
    /** The static list; optional when `discovery` finds the workers (both may be given: the fleet is their union). */
    workers: z
      .array(workerConfigSchema)
      .default([])
      .superRefine((workers, ctx) => {
        const seen = new Set<string>();
        workers.forEach((w, i) => {
          if (seen.has(w.id))
            ctx.addIssue({ code: 'custom', path: [i, 'id'], message: `duplicate worker id '${w.id}'` });
          seen.add(w.id);
        });
      }),
    /** Where workers come from at runtime (`dns`, `kubernetes`; `static` = `workers` only). See gateway/fleet/discovery/. */
    discovery: discoveryConfigSchema.optional(),
  })
  .superRefine((fleet, ctx) => {
    if (fleet.workers.length === 0 && (fleet.discovery === undefined || fleet.discovery.type === 'static')) {
      ctx.addIssue({
        code: 'custom',
        path: ['workers'],
        message: 'needs at least one worker (or set fleet.discovery to find them at runtime)',
      });
    }
  });
export type FleetConfig = z.infer<typeof fleetConfigSchema>;

/** Told when a worker goes down (health failed, breaker opened) or comes back up. */
export type WorkerStatusListener = (worker: Worker, up: boolean, reason: string | undefined) => void;

export interface FleetOptions {
  breaker?: BreakerConfig | undefined;
  /** Logs breaker transitions and workers going down or up. */
  log?: Logger | undefined;
  /** Keep `Worker.load` separate from `localLoad`, for other replicas' load to be added (gateway/fleet/load-sharing.ts). */
  sharedLoad?: boolean | undefined;
}

/** What one request holds on a worker, so finishing releases exactly what starting took. */
export interface LoadTicket {
  /** Unique per fleet: names the request in load-sharing deltas. */
  readonly id: number;
  readonly worker: Worker;
  readonly promptTokens: number;
  readonly blocks: number;
  /** Uncached prompt tokens, block hashes, output blocks: see `ActiveShare`. */
  readonly uncachedTokens: number;
  readonly hashes: readonly bigint[];
  readonly outputBlocks: number;
  readonly inPrefill: PrefillEntry;
  phase: 'prefill' | 'decode' | 'done';
}

/**
 * The fleet: workers, their availability and the gateway's own view of their load.
 * Availability (health AND breaker) is decided here and only here (`candidates`),
 * before any strategy runs, so strategies never see an unavailable worker.
 *
 * Membership changes at runtime (`add`, `remove`: discovery, config reload). A
 * removed worker leaves `workers` and every candidate list at once but stays
 * known (`draining`) until `forget`, so requests already routed to it finish
 * and release their load on the same object. Every change builds new arrays,
 * never mutates old ones: a strategy holding the previous candidate list keeps
 * a consistent view, and strategies that cache per list (the session ring) see
 * a new identity and rebuild.
 */
export class Fleet {
  #workers: readonly Worker[] = [];
  readonly #byId = new Map<string, Worker>();
  /** Removed workers still finishing requests, by id (one per id: a re-added id drains the old object first). */
  readonly #draining = new Map<string, Worker>();
  #models = new Set<string>();
  /** Available workers per model; rebuilt only when availability or membership changes, so routing allocates nothing. */
  #available = new Map<string, readonly Worker[]>();
  #healthy: readonly Worker[] = [];
  #passthroughCursor = 0;
  readonly #listeners: WorkerStatusListener[] = [];
  readonly #wasDown = new Map<Worker, boolean>();
  readonly #breakerState = new Map<Worker, string>();
  readonly #log: Logger | undefined;
  readonly #breakerConfig: BreakerConfig | undefined;
  readonly #sharedLoad: boolean;
  #tickets = 0;
  /** Told of every change to this replica's own load, as it happens (load sharing publishes it as a delta). */
  onLocalLoad: ((ticket: LoadTicket, delta: readonly number[]) => void) | undefined;

  constructor(configs: readonly WorkerConfig[], options: FleetOptions = {}) {
    this.#log = options.log;
    this.#sharedLoad = options.sharedLoad === true;
    this.#breakerConfig = options.breaker;
    const workers: Worker[] = [];
    for (const c of configs) workers.push(this.#create(c));
    this.#setMembers(workers);
  }

  /** The current members, healthy or not; a new array after each membership change. */
  get workers(): readonly Worker[] {
    return this.#workers;
  }

  /** Removed workers whose in-flight requests have not all finished yet. */
  get draining(): readonly Worker[] {
    return [...this.#draining.values()];
  }

  /**
   * A member by id; a removed worker still draining when there is no usable member
   * of that id (a request routed just before the removal still finds its worker).
   */
  get(id: string): Worker | undefined {
    const w = this.#byId.get(id);
    if (w !== undefined && w.healthy) return w;
    return this.#draining.get(id) ?? w;
  }

  /** Is this object a current member (not removed)? */
  has(worker: Worker): boolean {
    return this.#byId.get(worker.id) === worker;
  }

  /** Every model some worker serves, healthy or not. */
  get models(): ReadonlySet<string> {
    return this.#models;
  }

  servesModel(model: string): boolean {
    return this.#models.has(model);
  }

  /** Available workers serving `model`. The same array object is returned until availability changes. */
  candidates(model: string): readonly Worker[] {
    return this.#available.get(model) ?? EMPTY;
  }

  /** Available workers of any model (health passing, breaker admitting traffic). */
  get healthy(): readonly Worker[] {
    return this.#healthy;
  }

  /** Registers a listener for workers going down and coming back (see `Worker.down`). Members only. */
  onStatus(listener: WorkerStatusListener): void {
    this.#listeners.push(listener);
  }

  /** Adds a worker (not yet healthy: it takes traffic once a health check passes). Throws on a duplicate id. */
  add(config: WorkerConfig): Worker {
    if (this.#byId.has(config.id)) throw new Error(`worker '${config.id}' is already in the fleet`);
    const w = this.#create(config);
    this.#setMembers([...this.#workers, w]);
    return w;
  }

  /**
   * Takes a worker out: no new requests from now on. It stays `draining` (its
   * in-flight requests finish, its load is released on it) until `forget`.
   */
  remove(id: string): Worker | undefined {
    const w = this.#byId.get(id);
    if (w === undefined) return undefined;
    w.draining = true;
    // Only this replica's requests are ours to wait for when draining it.
    w.setRemoteLoad(undefined);
    const previous = this.#draining.get(id);
    if (previous) this.forget(previous);
    this.#draining.set(id, w);
    this.#setMembers(this.#workers.filter((x) => x !== w));
    return w;
  }

  /** A drained worker is gone for good: stops its breaker's timers. */
  forget(worker: Worker): void {
    if (this.#draining.get(worker.id) === worker) this.#draining.delete(worker.id);
    this.#wasDown.delete(worker);
    this.#breakerState.delete(worker);
    worker.breaker.shutdown();
  }

  /** Stops the breakers' timers. */
  close(): void {
    for (const w of this.#workers) w.breaker.shutdown();
    for (const w of this.#draining.values()) w.breaker.shutdown();
  }

  /** An available worker for plain pass-through requests, rotating. */
  anyHealthy(): Worker | undefined {
    const h = this.#healthy;
    if (h.length === 0) return undefined;
    return h[this.#passthroughCursor++ % h.length];
  }

  /** Records a health verdict; ignored for workers no longer in the fleet. */
  setHealthy(worker: Worker, healthy: boolean, error?: string): boolean {
    worker.lastError = error;
    if (worker.healthy === healthy || !this.has(worker)) return false;
    worker.healthy = healthy;
    this.#changed(worker, error);
    return true;
  }

  /** Counts a routed request as prefill on its worker. */
  start(worker: Worker, promptTokens: number, blocks: number, prompt: TicketPrompt = {}): LoadTicket {
    const t: LoadTicket = {
      id: ++this.#tickets,
      worker,
      blocks,
      ...worker.active.start(promptTokens, blocks, prompt),
      phase: 'prefill',
    };
    this.#bump(t, 1, 1, promptTokens, 0, 0);
    return t;
  }

  /** The first token arrived: the request moves from prefill to decode. */
  firstToken(t: LoadTicket): void {
    if (t.phase !== 'prefill') return;
    this.#bump(t, 0, -1, -t.promptTokens, 1, t.blocks);
    t.worker.active.firstToken(t);
    t.phase = 'decode';
  }

  /** The request finished, failed or was aborted. Idempotent. */
  finish(t: LoadTicket): void {
    if (t.phase === 'done') return;
    t.worker.active.finish(t);
    if (t.phase === 'prefill') this.#bump(t, -1, -1, -t.promptTokens, 0, 0);
    else this.#bump(t, -1, 0, 0, -1, -t.blocks);
    t.phase = 'done';
  }

  /** The members' own load by worker id: what this replica publishes to the others. */
  *localLoads(): Iterable<[string, Readonly<WorkerLoad>]> {
    for (const w of this.#workers) yield [w.id, w.localLoad];
  }

  /** Other replicas' load on a member (undefined = none); ignored for ids not (or no longer) in the fleet. */
  setRemoteLoad(id: string, remote: Readonly<WorkerLoad> | undefined): void {
    this.#byId.get(id)?.setRemoteLoad(remote);
  }

  #bump(
    t: LoadTicket,
    inflight: number,
    prefillRequests: number,
    prefillTokens: number,
    decodeRequests: number,
    decodeBlocks: number,
  ): void {
    const w = t.worker;
    addLoad(w.localLoad, inflight, prefillRequests, prefillTokens, decodeRequests, decodeBlocks);
    if (w.load !== w.localLoad) addLoad(w.load, inflight, prefillRequests, prefillTokens, decodeRequests, decodeBlocks);
    this.onLocalLoad?.(t, [inflight, prefillRequests, prefillTokens, decodeRequests, decodeBlocks]);
  }

  #create(config: WorkerConfig): Worker {
    const w: Worker = new Worker(
      config,
      this.#breakerConfig,
      () => this.#changed(w, w.breaker.snapshot().lastFailure),
      this.#sharedLoad,
    );
    return w;
  }

  #setMembers(workers: readonly Worker[]): void {
    this.#workers = workers;
    this.#byId.clear();
    const models = new Set<string>();
    for (const w of workers) {
      this.#byId.set(w.id, w);
      for (const m of w.models) models.add(m);
    }
    this.#models = models;
    this.#rebuild();
  }

  /** Health or breaker changed: rebuild the candidate lists, then tell listeners if the worker went down or up. */
  #changed(worker: Worker, reason: string | undefined): void {
    // A removed worker's breaker may still move (its last requests); it is no one's business any more.
    if (!this.has(worker)) return;
    this.#rebuild();
    const state = worker.breaker.state;
    if ((this.#breakerState.get(worker) ?? 'closed') !== state) {
      this.#breakerState.set(worker, state);
      this.#log?.[state === 'open' ? 'warn' : 'info']({ worker: worker.id, state, reason }, 'worker breaker state');
    }
    const down = worker.down;
    if (down === (this.#wasDown.get(worker) ?? true)) return;
    this.#wasDown.set(worker, down);
    this.#log?.[down ? 'warn' : 'info'](
      { worker: worker.id, healthy: worker.healthy, breaker: state, reason },
      down ? 'worker down' : 'worker up',
    );
    for (const l of this.#listeners) l(worker, !down, reason);
  }

  #rebuild(): void {
    const available = new Map<string, Worker[]>();
    for (const w of this.#workers) {
      if (!w.available) continue;
      for (const m of w.models) {
        let list = available.get(m);
        if (!list) available.set(m, (list = []));
        list.push(w);
      }
    }
    this.#available = available;
    this.#healthy = this.#workers.filter((w) => w.available);
  }
}

const EMPTY: readonly Worker[] = Object.freeze([]);
