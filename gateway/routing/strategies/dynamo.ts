import { z } from 'zod';
import { matchDecision, matchWorkers, overlapSource, treeSizeOf } from './overlap.js';
import { argminRandomTie, round, softmaxSample } from './pick.js';
import type { CandidateScore, Decision, RouteContext, Strategy, StrategyDeps, WorkerView } from './strategy.js';

export const dynamoParamsSchema = z.strictObject({
  /** Dynamo's `--kv-overlap-score-weight`: 0 ignores the cache (pure load balancing). */
  overlapScoreWeight: z.number().min(0).max(1000).default(1),
  /** Dynamo's `--router-temperature`: 0 = argmin, > 0 = softmax sampling. */
  temperature: z.number().min(0).max(100).default(0),
  /** Dynamo's `--router-track-output-blocks` (off upstream): add in-flight requests' expected output blocks. */
  trackOutputBlocks: z.boolean().default(false),
  /** Credit for a prefix block held in host memory, relative to a GPU block (Dynamo 0.75). */
  hostTierWeight: z.number().min(0).max(1).default(0.75),
  /** Credit for a block on disk (Dynamo 0.25). Our index does not tell disk from host: unused until it does. */
  diskTierWeight: z.number().min(0).max(1).default(0.25),
  /**
   * Dynamo's `--router-queue-threshold` (the Python frontend's default 4.0; the Rust library's None):
   * requests wait in the router while every worker's active prefill tokens exceed this
   * multiple of `maxNumBatchedTokens`. kvgate's strategies cannot hold a request, so the
   * decision only reports when Dynamo would have queued it. null = off.
   */
  routerQueueThreshold: z.number().min(0).max(1000).nullable().default(4),
  /** The engine's `max-num-batched-tokens` the threshold is relative to (vLLM's default 8192). */
  maxNumBatchedTokens: z.number().int().min(1).default(8192),
});
export type DynamoParams = z.infer<typeof dynamoParamsSchema>;

const RULE = 'lowest overlapScoreWeight*potentialPrefillBlocks+potentialDecodeBlocks (Dynamo)';

/**
 * NVIDIA Dynamo's default KV router cost. Models ai-dynamo/dynamo as of its
 * 2026 releases (v0.9–v1.0, `lib/kv-router/src/scheduling/selector.rs` and the
 * active-sequence tracking in `lib/kv-router/src/sequences/`; the same cost as
 * `lib/llm/src/kv_router/scheduler.rs` of v0.4–v0.8), with upstream's defaults:
 *
 *   credit_blocks            = gpu_overlap + 0.75 × host_overlap (+ 0.25 × disk_overlap)
 *   potential_prefill_tokens = active uncached prefill tokens + max(0, isl − credit_blocks × block_size)
 *   potential_decode_blocks  = unique active block hashes + request blocks not already active
 *   logit = overlap_score_weight × potential_prefill_tokens / block_size + potential_decode_blocks
 *
 * "Active uncached prefill tokens" is, per request awaiting its first token, its
 * prompt less what the router predicted cached (recorded on the load ticket).
 * Active blocks are the distinct prompt block hashes of in-flight requests
 * (a prefix shared by several counts once), released when the request ends;
 * expected output blocks are added only with `trackOutputBlocks` (off upstream).
 * Lowest logit wins; exactly equal logits tie, broken by the smaller index tree
 * (when the matcher has tree sizes), then at random. Temperature > 0 samples
 * `p ∝ exp(−(c − c_min)/((c_max − c_min)·T))`.
 *
 * What kvgate cannot do as upstream: the router queue (`routerQueueThreshold`)
 * is reported, not enforced; active blocks are this replica's own requests;
 * workers with no block view (hand-built test fleets) fall back to the
 * prompt-token load, with all of the request's blocks counted as new.
 * @example createDynamoStrategy({ overlapScoreWeight: 1, temperature: 0 }, deps).choose(ctx, workers)
 */
export function createDynamoStrategy(
  params: Partial<DynamoParams>,
  deps: Pick<StrategyDeps, 'index' | 'blockSize'>,
): Strategy {
  const p = dynamoParamsSchema.parse(params);
  const matcher = deps.index;
  const treeSize = treeSizeOf(matcher);
  const tieBreak = treeSize ? 'smaller tree, then random' : 'random (index has no tree sizes)';
  const queueTokens = p.routerQueueThreshold === null ? Infinity : p.routerQueueThreshold * p.maxNumBatchedTokens;
  return {
    name: 'dynamo',
    needsPromptBlocks: true,
    choose(ctx: RouteContext, candidates: readonly WorkerView[]): Decision {
      const blockSize = ctx.blocks?.blockSize ?? deps.blockSize;
      const hashes = ctx.blocks?.hashes ?? [];
      const matches = matchWorkers(ctx, matcher, 1);
      const isl = ctx.promptTokens;
      const requestBlocks = Math.ceil(isl / blockSize);
      const n = candidates.length;
      const logits = new Float64Array(n);
      const scores = new Array<CandidateScore>(n);
      let min = Infinity;
      let allBusy = true;
      for (let i = 0; i < n; i++) {
        const w = candidates[i]!;
        const m = matches?.get(w.id);
        const overlapBlocks = m?.blocks ?? 0;
        const gpu = m ? Math.min(m.gpuBlocks, m.blocks) : 0;
        const creditBlocks = gpu + p.hostTierWeight * (overlapBlocks - gpu);
        const a = w.active;
        const activePrefillTokens = a ? a.prefillUncachedTokens : w.load.prefillTokens;
        if (activePrefillTokens <= queueTokens) allBusy = false;
        const potentialPrefillTokens = activePrefillTokens + Math.max(0, isl - creditBlocks * blockSize);
        const potentialPrefillBlocks = potentialPrefillTokens / blockSize;
        let activeBlocks: number;
        let newBlocks = requestBlocks;
        if (a) {
          activeBlocks = a.uniqueBlocks + (p.trackOutputBlocks ? a.outputBlocks : 0);
          for (const h of hashes) if (a.has(h)) newBlocks--;
        } else {
          activeBlocks = w.load.decodeBlocks + Math.ceil(w.load.prefillTokens / blockSize);
        }
        const potentialDecodeBlocks = activeBlocks + newBlocks;
        const logit = p.overlapScoreWeight * potentialPrefillBlocks + potentialDecodeBlocks;
        logits[i] = logit;
        if (logit < min) min = logit;
        scores[i] = {
          worker: w.id,
          terms: {
            overlapBlocks,
            creditBlocks: round(creditBlocks),
            potentialPrefillTokens: round(potentialPrefillTokens),
            potentialPrefillBlocks: round(potentialPrefillBlocks),
            activeBlocks,
            newBlocks,
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
        // Only exactly equal logits tie (Dynamo compares them as they are); then smallest tree, then random.
        const outside = (i: number) => logits[i] !== min;
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
        trackOutputBlocks: p.trackOutputBlocks,
        ...(allBusy && n > 0
          ? { routerQueue: 'Dynamo would hold this request: every worker is over the threshold' }
          : {}),
        ...scores[best]!.terms,
        ...(p.temperature > 0 ? {} : { tied, tieBreak }),
      }));
    },
  };
}
