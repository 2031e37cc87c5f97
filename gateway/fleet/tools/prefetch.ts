import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { PrefetchConfig } from './config.js';
import type { KvRetainer, RetainRequest, RetainTarget } from './retainer.js';

/**
 * Where a session's prefetch stands. `planned`: waiting for its time;
 * `sent`: the warm-up runs; `ok` / `error`: it finished; `cancelled`: the
 * follow-up came first; `busy`: due while `maxConcurrent` warm-ups ran;
 * `forgotten`: the session was dropped (expired, evicted, or a new tool call replaced it).
 */
export type PrefetchOutcome = 'planned' | 'sent' | 'ok' | 'error' | 'cancelled' | 'busy' | 'forgotten';

/** A prefetch as `/debug/route` shows it; times are ms after the response that ended in the tool call. */
export interface PrefetchView {
  readonly plannedAtMs: number;
  readonly sentAtMs: number | undefined;
  readonly outcome: PrefetchOutcome;
  readonly promptTokens?: number;
  /** Tokens the engine already held (GPU or CPU tier) when the warm-up arrived. */
  readonly cachedTokens?: number;
}

export interface Timers {
  set(fn: () => void, ms: number): unknown;
  clear(handle: unknown): void;
}

const realTimers: Timers = {
  set: (fn, ms) => setTimeout(fn, ms).unref(),
  clear: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** One session's prefetch: at most one warm-up, sent once, cancellable until then. */
export class PrefetchPlan {
  #outcome: PrefetchOutcome = 'planned';
  #sentAtMs: number | undefined;
  #result: { promptTokens: number; cachedTokens: number } | undefined;
  #timer: unknown;
  readonly #plannedAtMs: number;
  readonly #owner: Prefetcher;

  constructor(owner: Prefetcher, plannedAtMs: number, timer: (plan: PrefetchPlan) => unknown) {
    this.#owner = owner;
    this.#plannedAtMs = plannedAtMs;
    this.#timer = timer(this);
  }

  get outcome(): PrefetchOutcome {
    return this.#outcome;
  }

  /** The follow-up arrived (`cancelled`) or the session was dropped (`forgotten`); a sent warm-up runs on. */
  cancel(why: 'cancelled' | 'forgotten'): void {
    if (this.#outcome !== 'planned') return;
    this.#owner.clear(this.#timer);
    this.#settle(why);
  }

  view(): PrefetchView {
    return {
      plannedAtMs: Math.round(this.#plannedAtMs),
      sentAtMs: this.#sentAtMs === undefined ? undefined : Math.round(this.#sentAtMs),
      outcome: this.#outcome,
      ...this.#result,
    };
  }

  /** The timer fired: `sentAtMs` since the tool call; false when the plan is no longer pending. */
  fire(sentAtMs: number): boolean {
    if (this.#outcome !== 'planned') return false;
    this.#outcome = 'sent';
    this.#sentAtMs = sentAtMs;
    return true;
  }

  done(outcome: 'ok' | 'error' | 'busy', result?: { promptTokens: number; cachedTokens: number }): void {
    this.#result = result;
    this.#settle(outcome);
  }

  #settle(outcome: Exclude<PrefetchOutcome, 'planned' | 'sent'>): void {
    this.#outcome = outcome;
    this.#owner.count(outcome);
  }
}

export interface PrefetcherDeps {
  readonly config: PrefetchConfig;
  readonly retainer: KvRetainer;
  readonly registry: Registry;
  readonly log: Logger;
  readonly now: () => number;
  readonly timers?: Timers;
}

/**
 * Schedules the warm-ups of pending tool-call sessions (see
 * `prefetchConfigSchema`). Warm-ups go straight to the holding worker, not
 * through routing, so they count in no routing or request metric, only in
 * `kvgate_tool_prefetches_total`; a failing worker costs that metric and a
 * log line, nothing else.
 */
export class Prefetcher {
  readonly #c: PrefetchConfig;
  readonly #retainer: KvRetainer;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #timers: Timers;
  readonly #outcomes: Counter<'outcome'>;
  #inflight = 0;
  readonly #counts = new Map<string, number>();

  constructor(d: PrefetcherDeps) {
    this.#c = d.config;
    this.#retainer = d.retainer;
    this.#log = d.log;
    this.#now = d.now;
    this.#timers = d.timers ?? realTimers;
    const registers = [d.registry];
    this.#outcomes = new Counter({
      name: 'kvgate_tool_prefetches_total',
      help: 'Warm-up requests bringing a tool-call session prefix back into GPU memory before the predicted return, by outcome (ok, error, cancelled: follow-up first, busy: concurrency bound full, forgotten: session dropped)',
      labelNames: ['outcome'],
      registers,
    });
    const self = this;
    new Gauge({
      name: 'kvgate_tool_prefetches_inflight',
      help: 'Warm-up requests running',
      registers,
      collect() {
        this.set(self.#inflight);
      },
    });
  }

  get enabled(): boolean {
    return this.#c.enabled && this.#retainer.prefetch !== undefined;
  }

  /**
   * Plans the one warm-up of a session whose tool call ended at `at`, from the
   * tool's return-delay quantile (undefined: not learned yet, no plan).
   */
  plan(
    worker: RetainTarget,
    req: RetainRequest,
    at: number,
    quantileMs: number | undefined,
    live: () => boolean,
  ): PrefetchPlan | undefined {
    if (!this.enabled || quantileMs === undefined) return undefined;
    const delay = Math.max(0, quantileMs - this.#c.leadMs);
    return new PrefetchPlan(this, delay, (plan) =>
      this.#timers.set(() => this.#send(plan, worker, req, at, live), delay),
    );
  }

  clear(handle: unknown): void {
    this.#timers.clear(handle);
  }

  count(outcome: string): void {
    this.#outcomes.labels(outcome).inc();
    this.#counts.set(outcome, (this.#counts.get(outcome) ?? 0) + 1);
  }

  summary(): Record<string, unknown> {
    const { quantile, leadMs, maxConcurrent } = this.#c;
    return {
      enabled: this.enabled,
      quantile,
      leadMs,
      maxConcurrent,
      inflight: this.#inflight,
      outcomes: Object.fromEntries(this.#counts),
    };
  }

  #send(plan: PrefetchPlan, worker: RetainTarget, req: RetainRequest, at: number, live: () => boolean): void {
    if (!live()) return plan.cancel('forgotten');
    if (!plan.fire(this.#now() - at)) return;
    if (this.#inflight >= this.#c.maxConcurrent) return plan.done('busy');
    this.#inflight++;
    this.#retainer.prefetch!(worker, req, this.#c).then(
      (r) => {
        this.#inflight--;
        plan.done('ok', { promptTokens: r.promptTokens, cachedTokens: r.cachedTokens });
      },
      (err: unknown) => {
        this.#inflight--;
        plan.done('error');
        this.#log.warn({ err, worker: worker.id }, 'tool retention: prefetch warm-up failed');
      },
    );
  }
}
