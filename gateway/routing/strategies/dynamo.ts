import { z } from 'zod';
import { matchDecision, matchWorkers, overlapSource, treeSizeOf } from './overlap.js';
import { argminRandomTie, round, softmaxSample } from './pick.js';
import type { CandidateScore, Decision, RouteContext, Strategy, StrategyDeps, WorkerView } from './strategy.js';

export const dynamoParamsSchema = z.strictObject({
  /** Dynamo's `--kv-overlap-score-weight`: 0 ignores the cache (pure load balancing). */
  overlapScoreWeight: z.number().min(0).max(1000).default(1),
  /** Dynamo's `--router-temperature`: 0 = argmin, > 0 = softmax sampling. */
  temperature: z.number().min(0).max(100).default(0),
});
export type DynamoParams = z.infer<typeof dynamoParamsSchema>;

/** Dynamo compares logits with this tolerance before its tree-size tie-break. */
const TIE_EPSILON = 1e-5;

const RULE = 'lowest overlapScoreWeight*potentialPrefillBlocks+potentialDecodeBlocks (Dynamo)';

/**
 * NVIDIA Dynamo's default KV router cost, as in ai-dynamo/dynamo
 * `lib/llm/src/kv_router/scheduler.rs` (`DefaultWorkerSelector::select_worker`
 * and `softmax_sample`, v0.4–v1.x; later moved to
 * `lib/kv-router/src/scheduling/selector.rs`):
 *
 *   potential_prefill_tokens = active_prefill_tokens + (isl − overlap_blocks × block_size)
 *   potential_decode_blocks  = active_blocks + request blocks not already active
 *   logit = overlap_score_weight × potential_prefill_tokens / block_size + potential_decode_blocks
 *
 * Lowest logit wins; logits within 1e-5 of the minimum tie, broken by the
 * smaller index tree (the matcher's tree size, when it has one), then at random.
 * Temperature > 0 samples `p ∝ exp(−(c − c_min)/((c_max − c_min)·T))`.
 *
 * Mapped onto the gateway's load tracking: active_prefill_tokens = prompt tokens
 * of requests awaiting their first token; active_blocks = decode blocks plus the
 * blocks of those prefilling prompts (Dynamo counts a request's blocks from
 * routing on). The gateway cannot see which of this prompt's blocks are held
 * by other in-flight requests, so all request blocks count as new (Dynamo's
 * value when no concurrent request shares the prefix). Overlap counts blocks
 * on any tier: Dynamo's index of that era did not weigh tiers.
 * @example createDynamoStrategy({ overlapScoreWeight: 1, temperature: 0 }, deps).choose(ctx, workers)
 */
export function createDynamoStrategy(params: DynamoParams, deps: Pick<StrategyDeps, 'index' | 'blockSize'>): Strategy {
  const p = dynamoParamsSchema.parse(params);
  const matcher = deps.index;
  const treeSize = treeSizeOf(matcher);
  const tieBreak = treeSize ? 'smaller tree, then random' : 'random (index has no tree sizes)';
  return {
    name: 'dynamo',
    needsPromptBlocks: true,
    choose(ctx: RouteContext, candidates: readonly WorkerView[]): Decision {
      const blockSize = ctx.blocks?.blockSize ?? deps.blockSize;
      const matches = matchWorkers(ctx, matcher, 1);
      const isl = ctx.promptTokens;
      const requestBlocks = Math.ceil(isl / blockSize);
      const n = candidates.length;
      const logits = new Float64Array(n);
      const scores = new Array<CandidateScore>(n);
      let min = Infinity;
      for (let i = 0; i < n; i++) {
        const w = candidates[i]!;
        const overlapBlocks = matches?.get(w.id)?.blocks ?? 0;
        const potentialPrefillTokens = w.load.prefillTokens + Math.max(0, isl - overlapBlocks * blockSize);
        const potentialPrefillBlocks = potentialPrefillTokens / blockSize;
        const activeBlocks = w.load.decodeBlocks + Math.ceil(w.load.prefillTokens / blockSize);
        const potentialDecodeBlocks = activeBlocks + requestBlocks;
        const logit = p.overlapScoreWeight * potentialPrefillBlocks + potentialDecodeBlocks;
        logits[i] = logit;
        if (logit < min) min = logit;
        scores[i] = {
          worker: w.id,
          terms: {
            overlapBlocks,
            potentialPrefillTokens,
            potentialPrefillBlocks: round(potentialPrefillBlocks),
            activeBlocks,
            potentialDecodeBlocks,
            logit: round(logit),
          },
        };
      }

      let best: number;
      let tied = 1;
      if (p.temperature > 0) {
        best = softmaxSample(logits, p.temperature, ctx.random);
      } else {
        // Among the tied minimum: smallest tree, then random.
        const outside = (i: number) => Math.abs(logits[i]! - min) >= TIE_EPSILON;
        const trees = new Float64Array(n);
        for (let i = 0; treeSize && i < n; i++) {
          if (!outside(i)) trees[i] = treeSize(matches?.get(candidates[i]!.id)?.target ?? candidates[i]!.id);
        }
        ({ index: best, ties: tied } = argminRandomTie(n, (i, b) => trees[i]! - trees[b]!, ctx.random, outside));
      }
      return matchDecision(candidates[best]!, matches, scores, () => ({
        rule: p.temperature > 0 ? `softmax(T=${p.temperature}) over ${RULE}` : RULE,
        index: overlapSource(ctx, matcher, 'kv events index'),
        overlapScoreWeight: p.overlapScoreWeight,
        ...scores[best]!.terms,
        ...(p.temperature > 0 ? {} : { tied, tieBreak }),
      }));
    },
  };
}
