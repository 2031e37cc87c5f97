import { z } from 'zod';
import { matchDecision, matchWorkers, overlapSource } from './overlap.js';
import { argminRandomTie, compareLoad, round, sameCost, softmaxSample } from './pick.js';
import {
  otherReplicasPrefillTokens,
  type CandidateScore,
  type Decision,
  type PrefixMatcher,
  type RouteContext,
  type Strategy,
  type StrategyDeps,
  type WorkerView,
} from './strategy.js';

export const kvParamsSchema = z.strictObject({
  /**
   * Blocks to prefill (this prompt's uncached part plus what is already queued)
   * against blocks in decode. 1 would treat them as equal, but a prefill block
   * delays the next first token far more than a decoding block slows a step:
   * at 1 the decode term decides and conversations scatter. 16 was tuned on
   * the Mooncake replay (bench/results/replay-sweep.md).
   */
  prefillWeight: z.number().min(0).max(1000).default(16),
  /** 0 = always the lowest cost; > 0 samples from a softmax over normalised costs. */
  temperature: z.number().min(0).max(100).default(0),
  /**
   * Extra worth of each cached block beyond the prefill it saves this request:
   * the later turns of a conversation reuse it only if this one stays with it.
   * Given only for blocks no other candidate holds and that are not a prefix
   * several request streams share (see chooseByKvCost).
   * 0 = only the immediate saving (a greedy choice that moves conversations
   * away from their cache at the first queue, and copies their prefix around).
   * The hit rate rises with it because a moved conversation pays its whole
   * history again and adds it to another worker's queue; the default was tuned
   * on the Mooncake replay (figures: bench/results/replay-sweep.md and
   * bench/results/replay-conversation.md). At the default a conversation moves
   * only off a hot spot: with 32 blocks that only its worker holds, when that
   * worker's prefill queue is about 200 × 32 blocks longer than another's.
   */
  reuseCredit: z.number().min(0).max(10_000).default(200),
  /** Worth of a CPU-offloaded block relative to a GPU one (it must be copied back first). */
  cpuTierWeight: z.number().min(0).max(1).default(0.75),
  /**
   * What counts as a worker's queued prefill: `prompt`, the whole prompts of requests awaiting
   * their first token (`WorkerLoad.prefillTokens`); `uncached`, only the parts not predicted
   * cached (this replica's `ActiveBlocksView`, plus other replicas' published load whole), as
   * `dynamo` and flow control count it.
   */
  queuedPrefill: z.enum(['prompt', 'uncached']).default('prompt'),
});
export type KvParams = z.infer<typeof kvParamsSchema>;

const RULE = 'lowest prefillWeight*(promptBlocks-overlap+queuedPrefillBlocks-reuseCredit*exclusiveBlocks)+decodeBlocks';

/**
 * The `kv` cost, shared with `approx-prefix` (which differs only in its matcher).
 * Per candidate: overlap = best DP rank's `gpu + cpuTierWeight × cpu` blocks;
 * cost = prefillWeight × (promptBlocks − overlap + prefillTokens/blockSize − reuseCredit × exclusive) + decodeBlocks,
 * where exclusive = overlap beyond both the largest overlap among the other
 * candidates and the shared prefix (`MatchCounts.sharedBlocks`: blocks from
 * which several different requests continue, such as a system prompt).
 * Lowest wins; exact ties go to less load (in-flight requests, then prefill
 * tokens), then at random. With temperature > 0 the winner is sampled instead.
 * The index is matched once; without prompt blocks every overlap is 0, which
 * leaves a pure load comparison.
 */
export function chooseByKvCost(
  ctx: RouteContext,
  candidates: readonly WorkerView[],
  matcher: PrefixMatcher | undefined,
  params: KvParams,
  defaultBlockSize: number,
  indexName: string,
): Decision {
  const blockSize = ctx.blocks?.blockSize ?? defaultBlockSize;
  const matches = matchWorkers(ctx, matcher, params.cpuTierWeight);
  // Fractional, so the partial last block (always prefilled) counts too.
  const promptBlocks = ctx.promptTokens / blockSize;
  const n = candidates.length;
  const overlaps = new Float64Array(n);
  // The two largest overlaps, so each candidate can see the best of the others.
  let top = 0,
    second = 0,
    topAt = -1;
  const shared = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const m = matches?.get(candidates[i]!.id);
    const o = m?.weighted ?? 0;
    overlaps[i] = o;
    // Whole blocks against a tier-weighted overlap: with CPU-tier blocks this credits slightly less, never more.
    shared[i] = m?.sharedBlocks ?? 0;
    if (o > top) {
      second = top;
      top = o;
      topAt = i;
    } else if (o > second) {
      second = o;
    }
  }
  const costs = new Float64Array(n);
  const scores = new Array<CandidateScore>(n);
  for (let i = 0; i < n; i++) {
    const w = candidates[i]!;
    const overlap = overlaps[i]!;
    // Only what no other candidate holds earns the reuse credit: a prefix that other workers
    // hold too stays cached there whatever this request does, so crediting it would keep
    // traffic off a worker that just joined. Nor does a prefix that several requests branch
    // from (a system prompt held by one worker): crediting it would pin every request that
    // uses it to that worker, and a restarted worker would never get its share back.
    const exclusive = Math.max(0, overlap - Math.max(i === topAt ? second : top, shared[i]!));
    const prefillBlocks = Math.max(0, promptBlocks - overlap);
    const queuedPrefillBlocks = queuedPrefillTokens(w, params.queuedPrefill) / blockSize;
    const decodeBlocks = w.load.decodeBlocks;
    const cost =
      params.prefillWeight * (prefillBlocks + queuedPrefillBlocks - params.reuseCredit * exclusive) + decodeBlocks;
    costs[i] = cost;
    scores[i] = {
      worker: w.id,
      terms: {
        overlapBlocks: round(overlap),
        sharedPrefixBlocks: shared[i]!,
        exclusiveBlocks: round(exclusive),
        promptBlocks: round(promptBlocks),
        prefillBlocks: round(prefillBlocks),
        queuedPrefillBlocks: round(queuedPrefillBlocks),
        decodeBlocks,
        cost: round(cost),
      },
    };
  }
  const { index: best, ties } =
    params.temperature > 0
      ? { index: softmaxSample(costs, params.temperature, ctx.random), ties: 1 }
      : argminRandomTie(
          n,
          (i, b) =>
            sameCost(costs[i]!, costs[b]!) ? compareLoad(candidates[i]!, candidates[b]!) : costs[i]! - costs[b]!,
          ctx.random,
        );
  return matchDecision(candidates[best]!, matches, scores, (m) => ({
    rule: params.temperature > 0 ? `softmax(T=${params.temperature}) over ${RULE}` : RULE,
    index: overlapSource(ctx, matcher, indexName),
    prefillWeight: params.prefillWeight,
    ...scores[best]!.terms,
    ...(m && m.blocks !== m.gpuBlocks ? { cpuTierBlocks: m.blocks - m.gpuBlocks } : {}),
    ties,
  }));
}

/**
 * KV-cache-aware routing over the events-fed index (`StrategyDeps.index`):
 * sends a request where its prefix is cached unless the queue there costs more
 * than the reuse saves. Without the index it still routes, by load alone, and
 * says so in `explain`.
 * @example createKvStrategy({ prefillWeight: 16, reuseCredit: 200, temperature: 0, cpuTierWeight: 0.75 }, deps).choose(ctx, workers)
 */
export function createKvStrategy(
  params: Partial<KvParams>,
  deps: Pick<StrategyDeps, 'index' | 'blockSize' | 'log'>,
): Strategy {
  const p = kvParamsSchema.parse(params);
  const { index } = deps;
  if (!index) {
    deps.log.warn(
      { strategy: 'kv' },
      'kv strategy has no KV index (no worker publishes kvEvents); it routes by load only',
    );
  }
  return {
    name: 'kv',
    needsPromptBlocks: true,
    choose(ctx: RouteContext, candidates: readonly WorkerView[]): Decision {
      return chooseByKvCost(ctx, candidates, index, p, deps.blockSize, 'kv events index');
    },
  };
}

function queuedPrefillTokens(w: WorkerView, counted: KvParams['queuedPrefill']): number {
  const a = w.active;
  if (counted === 'prompt' || !a) return w.load.prefillTokens;
  return a.prefillUncachedTokens + otherReplicasPrefillTokens(w, a);
}
