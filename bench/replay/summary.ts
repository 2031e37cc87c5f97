import type { RequestResult } from './client.js';
import type { UpperBound } from './trace.js';

/** The counters the replay reads from each simulated worker's `GET /sim/stats`. */
export interface WorkerStats {
  id: string;
  prefixQueryTokens: number;
  prefixHitTokens: number;
  prefillTokensComputed: number;
  preemptions: number;
  evictions: number;
  /** Real ms the engine fell behind its own clock (absent from older workers: 0). */
  lostMs?: number | undefined;
  /** Real ms of steps that computed prefill (absent from older workers). */
  prefillBusyMs?: number | undefined;
}

export interface Dist {
  mean: number;
  p50: number;
  p90: number;
  p99: number;
}

/** One strategy's result. Latencies are in simulated seconds: real time × speed-up. */
export interface StrategySummary {
  strategy: string;
  requests: number;
  failed: number;
  ttft: Dist;
  /** TTFT at percentiles 0, 1, ..., 100: enough to draw its CDF. */
  ttftQuantiles: number[];
  e2e: Dist;
  /** Σ(output tokens − 1) / Σ(e2e − ttft) over requests: the decode speed a user sees (simulated s). */
  outputTokPerS: number;
  /** Prefix-cache hit rate in tokens, over the whole fleet. */
  hitRate: number;
  /** `hitRate` over the trace's infinite-shared-cache bound (tokens). */
  ofUpperBound: number;
  prefillTokens: number;
  /** max / mean of per-worker prefill tokens computed (1 = perfectly even). */
  prefillImbalance: number;
  preemptions: number;
  /** The most real ms any one simulated engine fell behind its clock: 0 when the machine kept up. */
  simLostMs: number;
  /** How far behind schedule the client sent, real ms. */
  lateness: { mean: number; p99: number; max: number };
  /** Requests per worker, as the gateway's `x-kvgate-worker` header reported. */
  perWorker: Record<string, number>;
  /** Filled in by the runner: CPU seconds per process and wall time of the run. */
  cpuS?: { client: number; sim: number; gateway: number; gatewayReplay?: number };
  /** The gateway's index counters at the end of the run (bench/replay/run.ts `INDEX_COUNTERS`). */
  gatewayCounters?: Record<string, number>;
  wallS?: number;
}

/**
 * The gateway's CPU milliseconds per request while replaying (routing decision,
 * tokenization, proxying, event ingestion): what exact prefix matching costs
 * next to the hit rate it buys. NaN when the run did not measure it.
 */
export function gatewayCpuMsPerRequest(s: StrategySummary): number {
  const cpu = s.cpuS?.gatewayReplay;
  return cpu !== undefined && s.requests > 0 ? (cpu * 1000) / s.requests : NaN;
}

/** Linear-interpolation percentile (NumPy's default) of an ascending array; NaN when empty. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * p;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

export function mean(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  let s = 0;
  for (const v of values) s += v;
  return s / values.length;
}

export function distribution(values: readonly number[]): Dist {
  const s = [...values].sort((a, b) => a - b);
  return { mean: mean(s), p50: percentile(s, 0.5), p90: percentile(s, 0.9), p99: percentile(s, 0.99) };
}

/** max / mean; 1 for an all-zero list (nothing to balance). */
export function imbalance(values: readonly number[]): number {
  const m = mean(values);
  return m > 0 ? Math.max(...values) / m : 1;
}

export function summarise(
  strategy: string,
  results: readonly RequestResult[],
  workers: readonly WorkerStats[],
  bound: UpperBound,
  speedup: number,
): StrategySummary {
  const ok = results.filter((r) => r.ok);
  const simS = (ms: number) => (ms * speedup) / 1000;
  const queries = workers.reduce((a, w) => a + w.prefixQueryTokens, 0);
  const hits = workers.reduce((a, w) => a + w.prefixHitTokens, 0);
  const hitRate = queries ? hits / queries : 0;
  let decodeTokens = 0,
    decodeMs = 0;
  for (const r of ok) {
    if (r.outputTokens < 2) continue;
    decodeTokens += r.outputTokens - 1;
    decodeMs += r.e2eMs - r.ttftMs;
  }
  const late = [...results.map((r) => r.lateMs)].sort((a, b) => a - b);
  const ttfts = ok.map((r) => simS(r.ttftMs)).sort((a, b) => a - b);
  const perWorker: Record<string, number> = {};
  for (const r of results) if (r.worker) perWorker[r.worker] = (perWorker[r.worker] ?? 0) + 1;
  return {
    strategy,
    requests: results.length,
    failed: results.length - ok.length,
    ttft: distribution(ttfts),
    ttftQuantiles: Array.from({ length: 101 }, (_, i) => percentile(ttfts, i / 100)),
    e2e: distribution(ok.map((r) => simS(r.e2eMs))),
    outputTokPerS: decodeMs > 0 ? decodeTokens / simS(decodeMs) : NaN,
    hitRate,
    ofUpperBound: bound.tokenRate ? hitRate / bound.tokenRate : 0,
    prefillTokens: workers.reduce((a, w) => a + w.prefillTokensComputed, 0),
    prefillImbalance: imbalance(workers.map((w) => w.prefillTokensComputed)),
    preemptions: workers.reduce((a, w) => a + w.preemptions, 0),
    simLostMs: Math.max(0, ...workers.map((w) => w.lostMs ?? 0)),
    lateness: { mean: mean(late), p99: percentile(late, 0.99), max: late.at(-1) ?? 0 },
    perWorker,
  };
}
