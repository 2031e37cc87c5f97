import { z } from 'zod';
import { approxIndexParams, createApproxMatcher, type RecordingMatcher } from './approx-prefix.js';
import { matchWorkers, overlapSource } from './overlap.js';
import { argminRandomTie, leastInflight } from './pick.js';
import type { Decision, PrefixMatcher, RouteContext, Strategy, StrategyDeps, WorkerView } from './strategy.js';

export const sglangCacheAwareParamsSchema = z.strictObject({
  /** Minimum match rate (matched / prompt) to follow the cache. */
  cacheThreshold: z.number().min(0).max(1).default(0.3),
  /** Imbalanced only if max − min in-flight requests exceeds this... */
  balanceAbsThreshold: z.number().int().min(0).default(64),
  /** ...and max exceeds this multiple of min. */
  balanceRelThreshold: z.number().min(0).default(1.5),
  /** `approx`: SGLang's own tree, fed by routing decisions (faithful). `events`: the KV events index. */
  source: z.enum(['approx', 'events']).default('approx'),
  ...approxIndexParams,
  // SGLang evicts by size only (LRU down to `max_tree_size` per tenant), never by age: the TTL is off (1 day).
  ttlSeconds: approxIndexParams.ttlSeconds.default(86_400),
});
export type SglangCacheAwareParams = z.infer<typeof sglangCacheAwareParamsSchema>;

/**
 * SGLang router's `cache_aware` policy. Models sgl-project/sglang as of its
 * 2026 releases (sglang-router v0.3, `sgl-model-gateway/src/policies/cache_aware.rs`
 * and `tree.rs`; formerly `sgl-router/src/policies/cache_aware.rs`), with the
 * command line's defaults (cache threshold 0.3, balance 64 / 1.5, which both the
 * Rust CLI and the Python launcher ship), not the library's `CacheAwareConfig`
 * defaults (0.5 / 32 / 1.1):
 * 1. load = the router's in-flight requests per worker; the fleet is imbalanced
 *    when `max − min > balance_abs_threshold` AND `max > balance_rel_threshold × min`:
 *    then the least-loaded worker (ties at random);
 * 2. otherwise match_rate = matched / input; above `cache_threshold` the worker
 *    holding the deepest match, else the least-loaded worker (SGLang since Dec
 *    2025; before, the smallest tree).
 * In both cases the request is inserted into the tree for the chosen worker.
 * Differences: SGLang matches raw text characters in a per-model tree; we match
 * our KV blocks (match_rate = matched blocks × block size / prompt tokens), and
 * eviction is oldest-first over all workers once `maxBlocks` is reached (upstream:
 * LRU leaves per tenant down to `max_tree_size` every `eviction_interval_secs`);
 * like upstream there is no age limit by default. Equally deep matches go, as
 * upstream's tree returns the tenant that last touched the matched node, to the
 * worker most recently routed a request (ties that never were: at random).
 * @example createSglangCacheAwareStrategy({ cacheThreshold: 0.3 }, deps).choose(ctx, workers)
 */
export function createSglangCacheAwareStrategy(
  params: Partial<SglangCacheAwareParams>,
  deps: Pick<StrategyDeps, 'index' | 'blockSize' | 'now'>,
): Strategy {
  const p = sglangCacheAwareParamsSchema.parse(params);
  const approx: RecordingMatcher | undefined = p.source === 'approx' ? createApproxMatcher(p, deps.now) : undefined;
  const indexName = p.source === 'approx' ? 'approximate tree (routing decisions)' : 'kv events index';
  const matcher: PrefixMatcher | undefined = approx ?? deps.index;
  // Routing sequence number of each worker's latest request: the tree's "last tenant" at equal depth.
  const lastRouted = new Map<string, number>();
  let seq = 0;

  return {
    name: 'sglang-cache-aware',
    needsPromptBlocks: true,
    choose(ctx: RouteContext, candidates: readonly WorkerView[]): Decision {
      let maxLoad = -Infinity;
      let minLoad = Infinity;
      for (const w of candidates) {
        const l = w.load.inflightRequests;
        if (l > maxLoad) maxLoad = l;
        if (l < minLoad) minLoad = l;
      }
      const loads = { maxLoad, minLoad };
      if (maxLoad - minLoad > p.balanceAbsThreshold && maxLoad > p.balanceRelThreshold * minLoad) {
        const worker = leastInflight(ctx, candidates);
        return {
          worker,
          explain: {
            rule: 'imbalanced: least in-flight requests',
            ...loads,
            inflightRequests: worker.load.inflightRequests,
          },
        };
      }

      const matches = matchWorkers(ctx, matcher, 1);
      const index = overlapSource(ctx, matcher, indexName);
      // Deepest match first, then the last tenant routed to, then random; workers matching nothing take no part.
      const blocksAt = (i: number) => matches?.get(candidates[i]!.id)?.blocks ?? 0;
      const lastAt = (i: number) => lastRouted.get(candidates[i]!.id) ?? -1;
      const { index: deepestAt } = argminRandomTie(
        candidates.length,
        (i, b) => blocksAt(b) - blocksAt(i) || lastAt(b) - lastAt(i),
        ctx.random,
        (i) => blocksAt(i) === 0,
      );
      const deepest: WorkerView | undefined = candidates[deepestAt];
      const deepestBlocks = deepestAt < 0 ? 0 : blocksAt(deepestAt);
      const tokens = ctx.blocks?.tokenCount ?? 0;
      const blockSize = ctx.blocks?.blockSize ?? deps.blockSize;
      const matchRate = tokens > 0 ? Math.min(1, (deepestBlocks * blockSize) / tokens) : 0;
      if (deepest && matchRate > p.cacheThreshold) {
        return {
          worker: deepest,
          explain: {
            rule: 'balanced, match rate above cache threshold: deepest prefix match',
            index,
            ...loads,
            matchRate,
            cacheThreshold: p.cacheThreshold,
            matchedBlocks: deepestBlocks,
          },
          predictedCachedBlocks: deepestBlocks,
        };
      }
      const worker = leastInflight(ctx, candidates);
      return {
        worker,
        explain: {
          rule: 'balanced, match rate at or below cache threshold: least in-flight requests',
          index,
          ...loads,
          matchRate,
          cacheThreshold: p.cacheThreshold,
          inflightRequests: worker.load.inflightRequests,
        },
        predictedCachedBlocks: matches?.get(worker.id)?.blocks ?? 0,
      };
    },
    onRouted(ctx: RouteContext, decision: Decision): void {
      // SGLang inserts the request for whichever worker was chosen, load-balanced or not.
      lastRouted.set(decision.worker.id, ++seq);
      if (approx && ctx.blocks && ctx.blocks.hashes.length > 0) approx.record(decision.worker.id, ctx.blocks.hashes);
    },
  };
}
