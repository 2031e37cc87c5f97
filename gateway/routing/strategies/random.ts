import { z } from 'zod';
import type { Decision, RouteContext, Strategy, WorkerView } from './strategy.js';

export const randomParamsSchema = z.strictObject({});
export type RandomParams = z.infer<typeof randomParamsSchema>;

/**
 * Uniformly random choice: the baseline every other strategy should beat.
 * @example createRandomStrategy({}).choose(ctx, workers).worker.id
 */
export function createRandomStrategy(_params: RandomParams = {}): Strategy {
  return {
    name: 'random',
    choose(ctx: RouteContext, candidates: readonly WorkerView[]): Decision {
      const worker = candidates[Math.floor(ctx.random() * candidates.length)]!;
      return { worker, explain: { rule: 'uniform random', of: candidates.length } };
    },
  };
}
