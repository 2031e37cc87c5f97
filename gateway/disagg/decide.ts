import { chooseByKvCost, kvParamsSchema, type KvParams } from '../routing/strategies/kv.js';
import { matchWorkers, type PrefixMatcher } from '../routing/strategies/overlap.js';
import type { Decision, RouteContext, Strategy, WorkerView } from '../routing/strategies/strategy.js';
import type { DisaggConfig } from './config.js';
import { splitRoles } from './split.js';

export type DisaggPath = 'disaggregated' | 'aggregated';

/** What to do with one request in a pool that has prefill and decode workers. */
export interface DisaggPlan<W extends WorkerView = WorkerView> {
  path: DisaggPath;
  /** Why, in words, for `/debug/route` and logs. */
  reason: string;
  /** The worker that serves the request whole when it is not disaggregated (or the prefill leg fails). */
  aggregated: W;
  aggregatedDecision: Decision;
  /** Set when disaggregated. */
  prefill?: W;
  prefillDecision?: Decision;
  decode?: W;
  decodeDecision?: Decision;
  /** Available prefill workers, for a retry of the prefill leg. */
  prefillCandidates: readonly W[];
  decodeCandidates: readonly W[];
  promptTokens: number;
  /** Prompt tokens minus the best cached overlap on the aggregated-choice decode worker. */
  uncachedTokens: number;
  /** Prompt tokens queued on the least-loaded prefill worker. */
  prefillQueueTokens: number;
}

export interface DecideInput<W extends WorkerView> {
  ctx: RouteContext;
  /** The request's strategy (policy's choice): picks the prefill worker and the aggregated worker. */
  strategy: Strategy;
  /** Available workers of the request's pool. */
  candidates: readonly W[];
  config: DisaggConfig;
  /** The strategy's choice on the decode side, when the pipeline made it already; else decide asks the strategy. */
  aggregatedDecision?: Decision | undefined;
  matcher: PrefixMatcher | undefined;
  blockSize: number;
}

const decodeParamsCache = new Map<number, KvParams>();
/** The `kv` cost's params with `prefillWeight` = transferWeight; parsed, so every other param keeps the strategy's default. */
function decodeParams(transferWeight: number): KvParams {
  let p = decodeParamsCache.get(transferWeight);
  if (!p)
    decodeParamsCache.set(
      transferWeight,
      (p = kvParamsSchema.parse({ prefillWeight: transferWeight, temperature: 0 })),
    );
  return p;
}

const byId = <W extends WorkerView>(list: readonly W[], d: Decision): W =>
  list.find((w) => w.id === d.worker.id) ?? list[0]!;

/**
 * Conditional disaggregation. The decode side is every `decode` or `both`
 * worker; the prefill side every `prefill` worker.
 * 1. The request's strategy picks the aggregated worker among the decode side
 *    (where it would run whole); its cached overlap gives the uncached prefill.
 * 2. Aggregated when no prefill worker is available, or (conditional mode) when
 *    the uncached prefill is below `minUncachedTokens` (a short prefill costs
 *    the decode worker little, and a second leg plus a transfer adds TTFT),
 *    or when even the least-loaded prefill worker has `maxPrefillQueueTokens` queued.
 * 3. Otherwise the strategy picks the prefill worker among the prefill side
 *    (KV-aware strategies: prefix overlap and prefill load), and the decode
 *    worker is the lowest `transferWeight × (blocks to move + queued prefill) + decode blocks`.
 */
export function decide<W extends WorkerView>(input: DecideInput<W>): DisaggPlan<W> {
  const { ctx, strategy, config, matcher } = input;
  const { prefill: prefillSide, decode: decodeSide } = splitRoles(input.candidates);
  const aggregatedDecision = input.aggregatedDecision ?? strategy.choose(ctx, decodeSide);
  const aggregated = byId(decodeSide, aggregatedDecision);
  const overlapBlocks =
    aggregatedDecision.predictedCachedBlocks ?? matchWorkers(ctx, matcher, 0)?.get(aggregated.id)?.blocks ?? 0;
  const blockSize = ctx.blocks?.blockSize ?? input.blockSize;
  const uncachedTokens = Math.max(0, ctx.promptTokens - overlapBlocks * blockSize);
  const prefillQueueTokens = prefillSide.length === 0 ? 0 : Math.min(...prefillSide.map((w) => w.load.prefillTokens));
  const plan: DisaggPlan<W> = {
    path: 'aggregated',
    reason: '',
    aggregated,
    aggregatedDecision,
    prefillCandidates: prefillSide,
    decodeCandidates: decodeSide,
    promptTokens: ctx.promptTokens,
    uncachedTokens,
    prefillQueueTokens,
  };
  if (prefillSide.length === 0) return { ...plan, reason: 'no prefill worker available' };
  if (config.mode === 'conditional') {
    if (uncachedTokens < config.minUncachedTokens) {
      return {
        ...plan,
        reason: `uncached prefill ${uncachedTokens} tokens < minUncachedTokens ${config.minUncachedTokens}`,
      };
    }
    if (prefillQueueTokens >= config.maxPrefillQueueTokens) {
      return {
        ...plan,
        reason: `prefill pool saturated: ${prefillQueueTokens} tokens queued on its least-loaded worker >= maxPrefillQueueTokens ${config.maxPrefillQueueTokens}`,
      };
    }
  }
  const prefillDecision = strategy.choose(ctx, prefillSide);
  const decodeDecision = chooseByKvCost(
    ctx,
    decodeSide,
    matcher,
    decodeParams(config.transferWeight),
    input.blockSize,
    'kv events index',
  );
  return {
    ...plan,
    path: 'disaggregated',
    reason:
      config.mode === 'always'
        ? 'mode always'
        : `uncached prefill ${uncachedTokens} tokens >= minUncachedTokens ${config.minUncachedTokens}`,
    prefill: byId(prefillSide, prefillDecision),
    prefillDecision,
    decode: byId(decodeSide, decodeDecision),
    decodeDecision,
  };
}
