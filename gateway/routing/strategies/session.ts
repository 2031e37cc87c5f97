import { z } from 'zod';
import { HashRing } from './hash-ring.js';
import { leastLoaded } from './pick.js';
import type { Decision, RouteContext, Strategy, WorkerView } from './strategy.js';

export const sessionParamsSchema = z.strictObject({
  /** Points per worker on the ring: more points, evener spread, slower rebuilds. */
  virtualNodes: z.number().int().min(1).max(10_000).default(160),
});
export type SessionParams = z.infer<typeof sessionParamsSchema>;

/**
 * Session affinity by consistent hashing of the session header (the pipeline's
 * `routing.sessionHeader`, default `x-session-id`) onto a ring of the available
 * workers, so a conversation keeps hitting the worker that holds its KV cache.
 * Requests without the header go to the least-loaded worker.
 * @example createSessionStrategy({ virtualNodes: 160 }).choose(ctx, workers).worker.id
 */
export function createSessionStrategy(params: Partial<SessionParams> = {}): Strategy {
  const { virtualNodes } = sessionParamsSchema.parse(params);
  // The fleet hands out the same candidate array until health changes, so the ring is rebuilt only then.
  let ringFor: readonly WorkerView[] | undefined;
  let ring: HashRing<WorkerView> | undefined;
  return {
    name: 'session',
    choose(ctx: RouteContext, candidates: readonly WorkerView[]): Decision {
      if (ctx.sessionKey === undefined || ctx.sessionKey === '') {
        const { worker } = leastLoaded(ctx, candidates);
        return { worker, explain: { rule: 'no session header: least-load' } };
      }
      if (ringFor !== candidates) {
        ring = new HashRing(candidates, virtualNodes);
        ringFor = candidates;
      }
      return {
        worker: ring!.get(ctx.sessionKey)!,
        explain: { rule: 'consistent hash of session key', sessionKey: ctx.sessionKey },
      };
    },
  };
}
