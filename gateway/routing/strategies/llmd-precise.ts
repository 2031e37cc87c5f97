import { z } from 'zod';
import { matchDecision, matchWorkers, overlapSource } from './overlap.js';
import { argminRandomTie, round, sameCost } from './pick.js';
import type { CandidateScore, Decision, RouteContext, Strategy, StrategyDeps, WorkerView } from './strategy.js';

export const llmdPreciseParamsSchema = z.strictObject({
  prefixWeight: z.number().min(0).max(1000).default(2),
  kvUtilizationWeight: z.number().min(0).max(1000).default(1),
  queueWeight: z.number().min(0).max(1000).default(1),
  /**
   * `min-max`: as llm-d's scorer does (longest run, min-max normalised over the
   * endpoints that hold any of it). `prompt`: longest run / prompt blocks.
   */
  prefixNormalization: z.enum(['min-max', 'prompt']).default('min-max'),
  /**
   * KV blocks per worker, so usage is the absolute fraction llm-d's scorer reads
   * (`vllm:kv_cache_usage_perc`). Set it whenever the capacity is known (the
   * simulator's `kvBlocks`, the engine's `num_gpu_blocks`); the gateway scrapes
   * no worker `/metrics` yet. null: usage relative to the busiest candidate.
   */
  kvCapacityBlocks: z.number().int().min(1).nullable().default(null),
});
export type LlmdPreciseParams = z.infer<typeof llmdPreciseParamsSchema>;

/**
 * llm-d's inference scheduler with the precise prefix-cache profile. Models
 * llm-d/llm-d-inference-scheduler as of its v0.4 release line (2026 guides) and
 * the gateway-api-inference-extension scorers it embeds. Each
 * scorer gives every endpoint a score in [0, 1]; the weighted sum wins
 * (`max-score-picker`, ties at random). Followed:
 * - llm-d/llm-d-inference-scheduler `pkg/plugins/scorer/precise_prefix_cache.go`
 *   (longest consecutive run of the prompt's blocks per pod, from KV events) and
 *   `pkg/plugins/scorer/utils.go` (`indexedScoresToNormalizedScoredPods`:
 *   min-max over pods that scored, 1.0 when they all tie, 0 for the rest);
 * - gateway-api-inference-extension `scorer/queue.go` ((max − q)/(max − min)
 *   of waiting requests, 1.0 when equal) and `scorer/kvcache_utilization.go`
 *   (1 − KV-cache usage);
 * - weights 2 / 1 / 1 (prefix / kv-utilization / queue) from llm-d's current
 *   guide `guides/precise-prefix-cache-aware/scheduler/precise-prefix-cache-aware.values.yaml`
 *   and the scheduler's `deploy/config/epp-precise-prefix-cache-config.yaml`
 *   (earlier guides, v0.5, used 3 / 2 / 2: the same ordering).
 * Our inputs: the run is the matcher's leading blocks (any tier). KV usage is
 * the blocks in-flight requests hold (distinct prompt blocks plus expected
 * output, as the engine counts allocated blocks; decode blocks on hand-built
 * views) over `kvCapacityBlocks`, the absolute fraction upstream reads.
 * The queue differs: upstream reads the engine's waiting queue
 * (`vllm:num_requests_waiting`, requests not yet scheduled); kvgate counts its own
 * requests awaiting their first token, which also includes requests already
 * prefilling (running, not waiting) and leaves out other clients' requests and
 * other replicas'. Under a backlog both grow together; on an idle engine kvgate's
 * count is 1 while upstream's is 0 during a prefill.
 * @example createLlmdPreciseStrategy({ prefixWeight: 2, kvUtilizationWeight: 1, queueWeight: 1 }, deps)
 */
export function createLlmdPreciseStrategy(
  params: Partial<LlmdPreciseParams>,
  deps: Pick<StrategyDeps, 'index'>,
): Strategy {
  const p = llmdPreciseParamsSchema.parse(params);
  const matcher = deps.index;
  return {
    name: 'llmd-precise',
    needsPromptBlocks: true,
    choose(ctx: RouteContext, candidates: readonly WorkerView[]): Decision {
      const matches = matchWorkers(ctx, matcher, 1);
      const promptBlocks = ctx.blocks?.hashes.length ?? 0;
      const n = candidates.length;
      let runMin = Infinity;
      let runMax = 0;
      let qMin = Infinity;
      let qMax = -Infinity;
      let decodeMax = 0;
      for (const w of candidates) {
        const run = matches?.get(w.id)?.blocks ?? 0;
        if (run > 0 && run < runMin) runMin = run;
        if (run > runMax) runMax = run;
        const q = w.load.prefillRequests;
        if (q < qMin) qMin = q;
        if (q > qMax) qMax = q;
        if (usedBlocks(w) > decodeMax) decodeMax = usedBlocks(w);
      }
      const kvDenominator = p.kvCapacityBlocks ?? decodeMax;

      const scores = new Array<CandidateScore>(n);
      const totals = new Float64Array(n);
      for (let i = 0; i < n; i++) {
        const w = candidates[i]!;
        const run = matches?.get(w.id)?.blocks ?? 0;
        let prefix: number;
        if (p.prefixNormalization === 'prompt') prefix = promptBlocks > 0 ? Math.min(1, run / promptBlocks) : 0;
        else prefix = run === 0 ? 0 : runMax === runMin ? 1 : (run - runMin) / (runMax - runMin);
        const queue = qMax === qMin ? 1 : (qMax - w.load.prefillRequests) / (qMax - qMin);
        const usage = kvDenominator > 0 ? Math.min(1, usedBlocks(w) / kvDenominator) : 0;
        const kvUtilization = 1 - usage;
        const total = p.prefixWeight * prefix + p.kvUtilizationWeight * kvUtilization + p.queueWeight * queue;
        totals[i] = total;
        scores[i] = {
          worker: w.id,
          terms: {
            prefixRunBlocks: run,
            prefixScore: round(prefix),
            queueWaiting: w.load.prefillRequests,
            queueScore: round(queue),
            kvUsage: round(usage),
            kvUtilizationScore: round(kvUtilization),
            score: round(total),
          },
        };
      }
      // Highest score wins: the argmin of the score's negation.
      const { index: best, ties } = argminRandomTie(
        n,
        (i, b) => (sameCost(totals[i]!, totals[b]!) ? 0 : totals[b]! - totals[i]!),
        ctx.random,
      );
      return matchDecision(candidates[best]!, matches, scores, () => ({
        rule: 'highest prefixWeight*prefix + kvUtilizationWeight*(1-kvUsage) + queueWeight*queue (llm-d)',
        index: overlapSource(ctx, matcher, 'kv events index'),
        weights: { prefix: p.prefixWeight, kvUtilization: p.kvUtilizationWeight, queue: p.queueWeight },
        prefixNormalization: p.prefixNormalization,
        kvUsageFrom:
          p.kvCapacityBlocks === null
            ? 'held blocks relative to the busiest candidate'
            : `held blocks / ${p.kvCapacityBlocks} (absolute)`,
        ...scores[best]!.terms,
        ties,
      }));
    },
  };
}

/** Blocks the worker's in-flight requests hold, as an engine's KV usage counts them. */
function usedBlocks(w: WorkerView): number {
  return w.active ? w.active.uniqueBlocks + w.active.outputBlocks : w.load.decodeBlocks;
}
