import { z } from 'zod';
import type { Decision, RouteContext, Strategy, WorkerView } from './strategy.js';

export const leastLoadParamsSchema = z.strictObject({});
export type LeastLoadParams = z.infer<typeof leastLoadParamsSchema>;

/** Orders workers by in-flight requests, then by in-flight prefill tokens; 0 means a tie. */
export function compareLoad(a: WorkerView, b: WorkerView): number {
  return a.load.inflightRequests - b.load.inflightRequests || a.load.prefillTokens - b.load.prefillTokens;
}

/**
 * Picks among the least-loaded candidates, breaking exact ties at random
 * (reservoir sampling, so no array is built per request).
 */
export function leastLoaded(
  ctx: RouteContext,
  candidates: readonly WorkerView[],
): { worker: WorkerView; ties: number } {
  let best = candidates[0]!;
  let ties = 1;
  for (let i = 1; i < candidates.length; i++) {
    const w = candidates[i]!;
    const c = compareLoad(w, best);
    if (c < 0) {
      best = w;
      ties = 1;
    } else if (c === 0 && ctx.random() * ++ties < 1) {
      best = w;
    }
  }
  return { worker: best, ties };
}

/**
 * Fewest in-flight requests, ties by fewest in-flight prefill tokens, then random.
 * Uses only the gateway's own counters, so it reacts within the same request.
 * @example createLeastLoadStrategy({}).choose(ctx, workers).worker.id
 */
export function createLeastLoadStrategy(_params: LeastLoadParams = {}): Strategy {
  return {
    name: 'least-load',
    choose(ctx: RouteContext, candidates: readonly WorkerView[]): Decision {
      const { worker, ties } = leastLoaded(ctx, candidates);
      return {
        worker,
        explain: {
          rule: 'fewest in-flight requests, then prefill tokens',
          inflightRequests: worker.load.inflightRequests,
          prefillTokens: worker.load.prefillTokens,
          ties,
        },
      };
    },
  };
}
