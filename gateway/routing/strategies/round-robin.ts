import { z } from 'zod';
import type { Decision, RouteContext, Strategy, WorkerView } from './strategy.js';

export const roundRobinParamsSchema = z.strictObject({});
export type RoundRobinParams = z.infer<typeof roundRobinParamsSchema>;

/**
 * Cycles through the available candidates in order. The cursor is global, not
 * per model, which keeps it one integer; with one model it spreads exactly evenly.
 * @example createRoundRobinStrategy({}).choose(ctx, workers).worker.id
 */
export function createRoundRobinStrategy(_params: RoundRobinParams = {}): Strategy {
  let cursor = 0;
  return {
    name: 'round-robin',
    choose(_ctx: RouteContext, candidates: readonly WorkerView[]): Decision {
      const index = cursor++ % candidates.length;
      if (cursor >= Number.MAX_SAFE_INTEGER) cursor = 0;
      return { worker: candidates[index]!, explain: { rule: 'next in turn', index, of: candidates.length } };
    },
  };
}
