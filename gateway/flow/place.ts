import type { Worker } from '../fleet/fleet.js';
import type { Routed } from '../routing/pipeline.js';
import type { Decision } from '../routing/strategies/strategy.js';
import type { FlowClassConfig } from './config.js';
import type { TtftModel, TtftPrediction } from './predict.js';

/** Where a request may go now, or why it may not. */
export type Placement =
  | {
      readonly kind: 'go';
      readonly routed: Routed;
      /** Prefill tokens queued on the chosen worker ahead of this request, plus its own uncached part. */
      readonly prefillTokens: number;
    }
  | { readonly kind: 'saturated' }
  | { readonly kind: 'slo_miss'; readonly bestMs: number };

/**
 * Blocks of the prompt a candidate holds, as the strategy scored it: the chosen worker's
 * `predictedCachedBlocks`, the others' overlap terms. Strategies that do not look at
 * the cache report none, and every candidate then counts as uncached.
 */
export function cachedBlocksOf(decision: Decision, id: string): number {
  if (decision.worker.id === id && decision.predictedCachedBlocks !== undefined) return decision.predictedCachedBlocks;
  const terms = decision.candidates?.find((c) => c.worker === id)?.terms;
  if (!terms) return 0;
  return terms.overlapBlocks ?? terms.prefixRunBlocks ?? terms.cachedBlocks ?? terms.matchedBlocks ?? 0;
}

function uncached(routed: Routed, decision: Decision, id: string, blockSize: number): number {
  return Math.max(0, routed.ctx.promptTokens - cachedBlocksOf(decision, id) * blockSize);
}

/**
 * Chooses the worker for a request about to leave the gateway. A new request (`fresh`) keeps
 * the strategy's pick while any candidate has room; a held one is re-chosen by the strategy
 * at release time, so cache affinity still counts.
 * With a TTFT budget, a pick predicted to miss it gives way to the best-cached candidate
 * predicted to meet it; with none, `onSloMiss` decides.
 */
export function place(
  routed: Routed,
  model: TtftModel,
  blockSize: number,
  budgetMs: number | undefined,
  onSloMiss: FlowClassConfig['onSloMiss'],
  fresh: boolean,
  affinity: { waitedMs: number; waitMs: number } = { waitedMs: 0, waitMs: 0 },
): Placement {
  const all = routed.candidates.filter((w) => w.available);
  // Nothing to wait for: the proxy answers no-healthy-worker as it would without flow control.
  if (all.length === 0) return { kind: 'go', routed, prefillTokens: routed.ctx.promptTokens };
  const open = all.filter((w) => !model.saturated(w));
  if (open.length === 0) return { kind: 'saturated' };
  let decision = routed.decision;
  let worker: Worker = routed.worker;
  // A new request keeps the strategy's pick while any candidate has room, as without flow control:
  // moving it off a saturated favourite would trade its cache hits for a shorter queue the strategy
  // already weighed. A held request is released into the room that opened, so it is re-chosen there.
  if (!fresh) {
    // Released: the strategy picks again over every candidate; a pick without room is waited for
    // up to `affinityWaitMs` (its cache is worth a short wait), then the strategy picks among those with room.
    decision = routed.strategy.choose(routed.ctx, all);
    worker = all.find((w) => w.id === decision.worker.id) ?? all[0]!;
    if (!open.includes(worker)) {
      if (affinity.waitedMs < affinity.waitMs) return { kind: 'saturated' };
      decision = routed.strategy.choose(routed.ctx, open);
      worker = open.find((w) => w.id === decision.worker.id) ?? open[0]!;
    }
  }
  if (budgetMs !== undefined && model.predictMs(worker, uncached(routed, decision, worker.id, blockSize)) > budgetMs) {
    let best: Worker | undefined;
    let bestCached = -1;
    let bestMs = Number.POSITIVE_INFINITY;
    let fastest = Number.POSITIVE_INFINITY;
    for (const w of open) {
      const cached = cachedBlocksOf(decision, w.id);
      const ms = model.predictMs(w, uncached(routed, decision, w.id, blockSize));
      fastest = Math.min(fastest, ms);
      if (ms > budgetMs) continue;
      if (cached > bestCached || (cached === bestCached && ms < bestMs)) {
        best = w;
        bestCached = cached;
        bestMs = ms;
      }
    }
    if (best) {
      decision = {
        ...decision,
        worker: best,
        predictedCachedBlocks: bestCached,
        explain: {
          ...decision.explain,
          flow: `moved from '${worker.id}' to the best-cached worker predicted to meet the ${budgetMs} ms TTFT budget`,
        },
      };
      worker = best;
    } else if (onSloMiss !== 'route') {
      return { kind: 'slo_miss', bestMs: fastest };
    }
  }
  const out = worker === routed.worker && decision === routed.decision ? routed : { ...routed, worker, decision };
  return {
    kind: 'go',
    routed: out,
    prefillTokens: worker.load.prefillTokens + uncached(routed, decision, worker.id, blockSize),
  };
}

/** Predicted TTFT for every candidate of a routed request (`/debug/route`). */
export function predictions(routed: Routed, model: TtftModel, blockSize: number): TtftPrediction[] {
  return routed.candidates.map((w) =>
    model.explain(w, uncached(routed, routed.decision, w.id, blockSize), cachedBlocksOf(routed.decision, w.id)),
  );
}
