import type { RouteContext, WorkerView } from './strategy.js';

/**
 * How strategies pick one candidate out of scored ones: the argmin with a
 * random tie-break, softmax sampling, and the load order they fall back on.
 * Kept apart from any index so the load-only strategies use it too.
 */

/**
 * Index of the least of `n` candidates under `compare` (negative: `i` beats the
 * current best, 0: a tie), exact ties broken uniformly at random by reservoir
 * sampling, so no array of the tied is built per request. Candidates `skip`
 * rejects take no part; `index` is -1 when none does. `ties` counts the tied set.
 */
export function argminRandomTie(
  n: number,
  compare: (i: number, best: number) => number,
  random: () => number,
  skip?: (i: number) => boolean,
): { index: number; ties: number } {
  let best = -1;
  let ties = 0;
  for (let i = 0; i < n; i++) {
    if (skip?.(i)) continue;
    if (best < 0) {
      best = i;
      ties = 1;
      continue;
    }
    const c = compare(i, best);
    if (c < 0) {
      best = i;
      ties = 1;
    } else if (c === 0 && random() * ++ties < 1) {
      best = i;
    }
  }
  return { index: best, ties };
}

/** Orders workers by in-flight requests, then by in-flight prefill tokens; 0 means a tie. */
export function compareLoad(a: WorkerView, b: WorkerView): number {
  return a.load.inflightRequests - b.load.inflightRequests || a.load.prefillTokens - b.load.prefillTokens;
}

/** The least-loaded candidate (`compareLoad`), exact ties at random. */
export function leastLoaded(
  ctx: RouteContext,
  candidates: readonly WorkerView[],
): { worker: WorkerView; ties: number } {
  const { index, ties } = argminRandomTie(
    candidates.length,
    (i, b) => compareLoad(candidates[i]!, candidates[b]!),
    ctx.random,
  );
  return { worker: candidates[index]!, ties };
}

/** Least in-flight requests, ties at random (prefill tokens are not looked at: SGLang's load is a request count). */
export function leastInflight(ctx: RouteContext, candidates: readonly WorkerView[]): WorkerView {
  const { index } = argminRandomTie(
    candidates.length,
    (i, b) => candidates[i]!.load.inflightRequests - candidates[b]!.load.inflightRequests,
    ctx.random,
  );
  return candidates[index]!;
}

/**
 * Samples an index with `p_i ∝ exp(−(c_i − c_min) / ((c_max − c_min) · T))`,
 * Dynamo's softmax over min-max normalised costs (lower cost, likelier), so T
 * means the same whatever the scale of the costs. Uniform when all are equal.
 */
export function softmaxSample(costs: ArrayLike<number>, temperature: number, random: () => number): number {
  const n = costs.length;
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const c = costs[i]!;
    if (c < min) min = c;
    if (c > max) max = c;
  }
  if (!(max > min)) return Math.min(n - 1, Math.floor(random() * n));
  const scale = 1 / ((max - min) * temperature);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(-(costs[i]! - min) * scale);
  let r = random() * sum;
  for (let i = 0; i < n; i++) {
    r -= Math.exp(-(costs[i]! - min) * scale);
    if (r < 0) return i;
  }
  return n - 1;
}

/** Equal within float noise: costs are sums of fractions of blocks. */
export function sameCost(a: number, b: number): boolean {
  return Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a), Math.abs(b));
}

/** Rounds a term for display in `explain`/`candidates` without hiding real differences. */
export function round(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}
