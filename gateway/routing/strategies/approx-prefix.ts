import { z } from 'zod';
import { ApproxIndex } from '../../../indexer/index/approx-index.js';
import { targetKey } from '../../../indexer/index/radix-index.js';
import { chooseByKvCost, kvParamsSchema } from './kv.js';
import type { Decision, PrefixMatcher, RouteContext, Strategy, StrategyDeps, WorkerView } from './strategy.js';

/** A matcher the strategy itself teaches: "these blocks are now cached on that target". */
export interface RecordingMatcher extends PrefixMatcher {
  record(target: string, hashes: readonly bigint[]): void;
}

/** Params of an approximate index owned by a strategy (shared with `sglang-cache-aware`). */
export const approxIndexParams = {
  /** How long a routed prompt's blocks are assumed to stay cached (Dynamo's `--no-kv-events` uses 120 s). */
  ttlSeconds: z.number().min(1).max(86_400).default(120),
  /** Bound on remembered blocks across all workers; the oldest go first. */
  maxBlocks: z.number().int().min(1_000).max(100_000_000).default(1_000_000),
};

/** Builds the routing-fed index; `now` is injected so tests can expire entries. */
export function createApproxMatcher(p: { ttlSeconds: number; maxBlocks: number }, now: () => number): RecordingMatcher {
  return new ApproxIndex({ ttlMs: p.ttlSeconds * 1000, maxBlocks: p.maxBlocks, now });
}

export const approxPrefixParamsSchema = kvParamsSchema.extend(approxIndexParams);
export type ApproxPrefixParams = z.infer<typeof approxPrefixParamsSchema>;

/**
 * `kv`'s cost over a predicted index, for fleets that publish no KV events:
 * each routed prompt's blocks are assumed cached on the chosen target for
 * `ttlSeconds` (the approach of Dynamo's approximate mode). The index belongs
 * to this strategy instance and learns in `onRouted`.
 * @example createApproxPrefixStrategy({ ttlSeconds: 120 }, deps).choose(ctx, workers)
 */
export function createApproxPrefixStrategy(
  params: Partial<ApproxPrefixParams>,
  deps: Pick<StrategyDeps, 'blockSize' | 'now'>,
): Strategy {
  const p = approxPrefixParamsSchema.parse(params);
  const index = createApproxMatcher(p, deps.now);
  return {
    name: 'approx-prefix',
    needsPromptBlocks: true,
    choose(ctx: RouteContext, candidates: readonly WorkerView[]): Decision {
      return chooseByKvCost(
        ctx,
        candidates,
        index,
        p,
        deps.blockSize,
        `approximate index (routing decisions, ttl ${p.ttlSeconds}s)`,
      );
    },
    onRouted(ctx: RouteContext, decision: Decision): void {
      const hashes = ctx.blocks?.hashes;
      if (!hashes || hashes.length === 0) return;
      index.record(targetKey(decision.worker.id, decision.dataParallelRank ?? null), hashes);
    },
  };
}
