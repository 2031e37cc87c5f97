import { Gauge, type Registry } from 'prom-client';
import type { PlannerConfig } from './config.js';

/**
 * P/D balance advice: from what the gateway sees of one pool's traffic, the
 * prefill and decode worker counts that traffic needs to meet the targets.
 * Everything is measured over a sliding window of `windowSeconds`:
 *
 *   λ  = requests routed per second
 *   U  = mean uncached prompt tokens per request (prompt − predicted cached prefix)
 *   μp = prefill tokens/s of one worker while it is prefilling
 *        (Σ uncached tokens of finished prefills / Σ time the worker had ≥ 1 prefill in flight)
 *   S  = U / μp, the prefill service time
 *   ρ  = target prefill utilisation: each prefill worker is an M/D/1 queue, whose
 *        mean wait is ρ/(2(1−ρ))·S; waiting + service ≤ targetTtft gives
 *        ρ ≤ 2k/(1+2k) with k = (targetTtft − S)/S, capped at maxUtilisation
 *        (when S alone exceeds the target, no worker count can meet it: ρ = maxUtilisation and `ttftReachable: false`)
 *   prefill workers = max(1, ⌈λ·U / (μp·ρ)⌉)
 *
 *   O  = mean output tokens per request; λ·O is the decode demand in tokens/s
 *   μd = decode tokens/s of one worker while it is decoding (Σ output tokens / Σ time with ≥ 1 decode in flight)
 *   capacity at the target ITL = μd · min(1, targetItl / observed ITL): a worker
 *        missing the ITL target is credited only the share of its throughput that would meet it
 *   decode workers = max(1, ⌈λ·O / capacity⌉)
 *
 * Measured throughputs are at the observed concurrency; batching only raises
 * them with more load, so the advice errs towards more workers. Without
 * traffic (or before the first completion) the advice is the current count.
 */
export interface PoolSnapshot {
  pool: string;
  windowSeconds: number;
  requests: number;
  basis: 'measured' | 'no traffic in window' | 'no completed prefill or decode yet';
  inputs: Record<string, number | null>;
  targets: { ttftMs: number; itlMs: number; maxUtilisation: number };
  prefill: { recommended: number; utilisationTarget: number | null; ttftReachable: boolean | null; current: number };
  decode: { recommended: number; capacityTokensPerS: number | null; current: number };
  aggregatedWorkers: number;
}

export interface PoolWorkers {
  prefill: number;
  decode: number;
  both: number;
}

interface Timed<T> {
  t: number;
  v: T;
}

/** Time during which at least one item was in flight, windowed. */
class Busy {
  #inflight = 0;
  #since = 0;
  readonly #intervals: [number, number][] = [];

  start(now: number): void {
    if (this.#inflight++ === 0) this.#since = now;
  }

  end(now: number): void {
    if (this.#inflight === 0) return;
    if (--this.#inflight === 0) this.#intervals.push([this.#since, now]);
  }

  ms(from: number, now: number): number {
    while (this.#intervals.length > 0 && this.#intervals[0]![1] < from) this.#intervals.shift();
    let sum = 0;
    for (const [s, e] of this.#intervals) sum += e - Math.max(s, from);
    if (this.#inflight > 0) sum += now - Math.max(this.#since, from);
    return sum;
  }
}

class PoolState {
  readonly arrivals: Timed<{ prompt: number; uncached: number }>[] = [];
  readonly prefillTokens: Timed<number>[] = [];
  readonly decodeTokens: Timed<number>[] = [];
  readonly finished: Timed<{ ttftMs: number; itlMs: number | undefined; output: number }>[] = [];
  readonly prefillBusy = new Map<string, Busy>();
  readonly decodeBusy = new Map<string, Busy>();
  constructor(readonly since: number) {}
}

const MAX_EVENTS = 200_000;

function prune<T>(list: Timed<T>[], from: number): void {
  let i = 0;
  while (i < list.length && list[i]!.t <= from) i++; // the window is (now − W, now]
  if (i > 0) list.splice(0, i);
  if (list.length > MAX_EVENTS) list.splice(0, list.length - MAX_EVENTS);
}

const sum = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0);
const mean = (xs: readonly number[]) => (xs.length ? sum(xs) / xs.length : null);
const p90 = (xs: readonly number[]) =>
  xs.length ? [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * 0.9))]! : null;
const round = (x: number | null) => (x === null || !Number.isFinite(x) ? null : Math.round(x * 1000) / 1000);

export class Planner {
  readonly #config: PlannerConfig;
  readonly #now: () => number;
  readonly #pools = new Map<string, PoolState>();
  readonly #workers: (pool: string) => PoolWorkers;

  constructor(config: PlannerConfig, now: () => number, workers: (pool: string) => PoolWorkers) {
    this.#config = config;
    this.#now = now;
    this.#workers = workers;
  }

  #pool(name: string): PoolState {
    let p = this.#pools.get(name);
    if (!p) this.#pools.set(name, (p = new PoolState(this.#now())));
    return p;
  }

  arrival(pool: string, promptTokens: number, uncachedTokens: number): void {
    this.#pool(pool).arrivals.push({ t: this.#now(), v: { prompt: promptTokens, uncached: uncachedTokens } });
  }

  prefillStarted(pool: string, worker: string): void {
    busy(this.#pool(pool).prefillBusy, worker).start(this.#now());
  }

  /** `tokens`: uncached prompt tokens computed (0 when the prefill failed). */
  prefillEnded(pool: string, worker: string, tokens: number): void {
    const p = this.#pool(pool);
    const now = this.#now();
    busy(p.prefillBusy, worker).end(now);
    if (tokens > 0) p.prefillTokens.push({ t: now, v: tokens });
  }

  decodeStarted(pool: string, worker: string): void {
    busy(this.#pool(pool).decodeBusy, worker).start(this.#now());
  }

  decodeEnded(pool: string, worker: string, outputTokens: number): void {
    const p = this.#pool(pool);
    const now = this.#now();
    busy(p.decodeBusy, worker).end(now);
    if (outputTokens > 0) p.decodeTokens.push({ t: now, v: outputTokens });
  }

  /** A request finished: its time to first token, inter-token latency (with ≥ 2 tokens) and output length. */
  finished(pool: string, ttftMs: number, itlMs: number | undefined, outputTokens: number): void {
    this.#pool(pool).finished.push({ t: this.#now(), v: { ttftMs, itlMs, output: outputTokens } });
  }

  pools(): string[] {
    return [...this.#pools.keys()];
  }

  snapshot(pool: string): PoolSnapshot {
    const c = this.#config;
    const now = this.#now();
    const p = this.#pool(pool);
    const from = now - c.windowSeconds * 1000;
    for (const list of [p.arrivals, p.prefillTokens, p.decodeTokens, p.finished] as Timed<unknown>[][])
      prune(list, from);
    const windowS = Math.max(1, Math.min(c.windowSeconds, (now - p.since) / 1000));
    const workers = this.#workers(pool);
    const targets = { ttftMs: c.targetTtftMs, itlMs: c.targetItlMs, maxUtilisation: c.maxUtilisation };
    const hold: PoolSnapshot = {
      pool,
      windowSeconds: round(windowS)!,
      requests: p.arrivals.length,
      basis: 'no traffic in window',
      inputs: {},
      targets,
      prefill: { recommended: workers.prefill, utilisationTarget: null, ttftReachable: null, current: workers.prefill },
      decode: { recommended: workers.decode, capacityTokensPerS: null, current: workers.decode },
      aggregatedWorkers: workers.both,
    };
    const prompts = p.arrivals.map((a) => a.v.prompt);
    const uncached = p.arrivals.map((a) => a.v.uncached);
    const outputs = p.finished.map((f) => f.v.output);
    const itls = p.finished.flatMap((f) => (f.v.itlMs === undefined ? [] : [f.v.itlMs]));
    const ttfts = p.finished.map((f) => f.v.ttftMs);
    const prefillBusyS = sum([...p.prefillBusy.values()].map((b) => b.ms(from, now))) / 1000;
    const decodeBusyS = sum([...p.decodeBusy.values()].map((b) => b.ms(from, now))) / 1000;
    const lambda = p.arrivals.length / windowS;
    const U = mean(uncached) ?? 0;
    const O = mean(outputs);
    const muP = prefillBusyS > 0 ? sum(p.prefillTokens.map((e) => e.v)) / prefillBusyS : null;
    const muD = decodeBusyS > 0 ? sum(p.decodeTokens.map((e) => e.v)) / decodeBusyS : null;
    const itl = mean(itls);
    const inputs: Record<string, number | null> = {
      arrivalRatePerS: round(lambda),
      meanPromptTokens: round(mean(prompts)),
      p90PromptTokens: p90(prompts),
      meanUncachedPromptTokens: round(U),
      meanOutputTokens: round(O),
      p90OutputTokens: p90(outputs),
      prefillTokensPerSPerWorker: round(muP),
      prefillServiceMs: muP ? round((U / muP) * 1000) : null,
      meanTtftMs: round(mean(ttfts)),
      p90TtftMs: p90(ttfts),
      meanItlMs: round(itl),
      decodeTokensPerSPerWorker: round(muD),
      meanPrefillConcurrency: round(prefillBusyS / windowS),
      decodeDemandTokensPerS: O === null ? null : round(lambda * O),
    };
    if (p.arrivals.length === 0) return { ...hold, inputs };
    if (!muP || !muD || O === null) return { ...hold, basis: 'no completed prefill or decode yet', inputs };
    const S = U / muP;
    const T = c.targetTtftMs / 1000;
    const k = S > 0 ? (T - S) / S : Infinity;
    const rho = k > 0 ? Math.min(c.maxUtilisation, Number.isFinite(k) ? (2 * k) / (1 + 2 * k) : 1) : c.maxUtilisation;
    const prefillWorkers = Math.max(1, Math.ceil((lambda * U) / (muP * rho)));
    const capacity = muD * Math.min(1, itl ? c.targetItlMs / itl : 1);
    const decodeWorkers = Math.max(1, Math.ceil((lambda * O) / capacity));
    return {
      ...hold,
      basis: 'measured',
      inputs,
      prefill: {
        recommended: prefillWorkers,
        utilisationTarget: round(rho),
        ttftReachable: k > 0,
        current: workers.prefill,
      },
      decode: { recommended: decodeWorkers, capacityTokensPerS: round(capacity), current: workers.decode },
    };
  }

  /** `kvgate_recommended_prefill_workers{pool}` and `kvgate_recommended_decode_workers{pool}`, computed at scrape time. */
  register(registry: Registry): void {
    const self = this;
    new Gauge({
      name: 'kvgate_recommended_prefill_workers',
      help: "Prefill workers the pool's current traffic needs to meet the TTFT target (see /debug/planner)",
      labelNames: ['pool'],
      registers: [registry],
      collect() {
        for (const pool of self.pools()) this.set({ pool }, self.snapshot(pool).prefill.recommended);
      },
    });
    new Gauge({
      name: 'kvgate_recommended_decode_workers',
      help: "Decode workers the pool's current traffic needs to meet the inter-token latency target (see /debug/planner)",
      labelNames: ['pool'],
      registers: [registry],
      collect() {
        for (const pool of self.pools()) this.set({ pool }, self.snapshot(pool).decode.recommended);
      },
    });
  }
}

function busy(map: Map<string, Busy>, worker: string): Busy {
  let b = map.get(worker);
  if (!b) map.set(worker, (b = new Busy()));
  return b;
}
