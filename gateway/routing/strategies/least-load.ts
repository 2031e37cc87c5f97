import { z } from 'zod';
import { leastLoaded } from './pick.js';
import type { Decision, RouteContext, Strategy, WorkerView } from './strategy.js';

export const leastLoadParamsSchema = z.strictObject({});
export type LeastLoadParams = z.infer<typeof leastLoadParamsSchema>;

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
