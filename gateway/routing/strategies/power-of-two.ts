import { z } from 'zod';
import { compareLoad } from './pick.js';
import type { Decision, RouteContext, Strategy, WorkerView } from './strategy.js';

export const powerOfTwoParamsSchema = z.strictObject({});
export type PowerOfTwoParams = z.infer<typeof powerOfTwoParamsSchema>;

/**
 * "Power of two choices" (Mitzenmacher 2001): sample two distinct candidates at
 * random and keep the less loaded (in-flight requests, then prefill tokens).
 * Nearly as even as least-load, without herding every request to one idle worker.
 * @example createPowerOfTwoStrategy({}).choose(ctx, workers).worker.id
 */
export function createPowerOfTwoStrategy(_params: PowerOfTwoParams = {}): Strategy {
  return {
    name: 'power-of-two',
    choose(ctx: RouteContext, candidates: readonly WorkerView[]): Decision {
      const n = candidates.length;
      if (n === 1) return { worker: candidates[0]!, explain: { rule: 'only candidate' } };
      const i = Math.floor(ctx.random() * n);
      let j = Math.floor(ctx.random() * (n - 1));
      if (j >= i) j++;
      const a = candidates[i]!;
      const b = candidates[j]!;
      const c = compareLoad(a, b);
      const worker = c < 0 ? a : c > 0 ? b : ctx.random() < 0.5 ? a : b;
      return {
        worker,
        explain: { rule: 'less loaded of two random candidates', sampled: [a.id, b.id] },
        candidates: [
          { worker: a.id, terms: { inflightRequests: a.load.inflightRequests, prefillTokens: a.load.prefillTokens } },
          { worker: b.id, terms: { inflightRequests: b.load.inflightRequests, prefillTokens: b.load.prefillTokens } },
        ],
      };
    },
  };
}
