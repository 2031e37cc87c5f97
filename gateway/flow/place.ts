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
      /** Set when the request left the strategy's saturated pick for a worker with room: the cached blocks it gave up, and why. */
      readonly moved?: Move;
      /** Set when the request joined its saturated pick (`affinityOverflow`) rather than wait or move. */
      readonly joined?: true;
    }
  | { readonly kind: 'saturated' }
  /** The pick is saturated, another candidate has room, and moving there would give up cached blocks worth waiting for. */
  | { readonly kind: 'affinity' }
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
 * Why a request left its saturated pick: predicted faster even counting the recomputation
 * (`faster`), faster with nobody of its class or a higher one wanting the room (`uncontested`),
 * its wait for the pick ran out (`waited`), or it gave up no cached block (`free`).
 */
export type MoveReason = 'faster' | 'uncontested' | 'waited' | 'free';

export interface Move {
  readonly from: string;
  readonly lostBlocks: number;
  readonly reason: MoveReason;
}

/** How long a held request has waited for its saturated pick while another candidate had room, and the bounds on it. */
export interface AffinityWait {
  /** Since the request could first have gone elsewhere; 0 when it never could. */
  readonly waitedMs: number;
  /** `affinityWaitMs`: the longest wait for the pick, whatever else holds. */
  readonly maxMs: number;
  /**
   * No held request of its class or a higher one takes the room there is: waiting on would hand
   * it to a lower class, or leave it idle.
   */
  readonly uncontested: boolean;
  /**
   * Its tenant is over its fleet share (`tenants.fairness: fleet`): it does not move off its cached
   * pick to be served sooner. The recomputation a move costs comes out of the fleet's capacity,
   * which under overload is owed to the tenants within their share; it joins or waits instead.
   */
  readonly overShare?: boolean;
}

/**
 * How the strategy's pick is treated:
 * - `keep`: a new request while the gateway holds none; the pick stands while any candidate has
 *   room, saturated or not, as without flow control (the strategy weighed its queue against its cache).
 * - `room`: a new request while others are held (overload); the pick only if it has room.
 * - `rechoose`: a held request; the strategy picks again over the loads and cache of this moment,
 *   and the pick only if it has room.
 * A pick without room gives way to the strategy's pick among the candidates with room: at once
 * if that gives up no cached block, else once the wait for the pick is over (see `AffinityWait`).
 */
export type PickRule = 'keep' | 'room' | 'rechoose';

/**
 * Chooses the worker for a request about to leave the gateway (see `PickRule`). With a TTFT
 * budget, a pick predicted to miss it gives way to the best-cached candidate predicted to
 * meet it; with none, `onSloMiss` decides.
 */
export function place(
  routed: Routed,
  model: TtftModel,
  blockSize: number,
  budgetMs: number | undefined,
  onSloMiss: FlowClassConfig['onSloMiss'],
  rule: PickRule,
  affinity: AffinityWait = { waitedMs: 0, maxMs: 0, uncontested: false },
): Placement {
  const all = routed.candidates.filter((w) => w.available);
  // Nothing to wait for: the proxy answers no-healthy-worker as it would without flow control.
  if (all.length === 0) return { kind: 'go', routed, prefillTokens: routed.ctx.promptTokens };
  const open = all.filter((w) => !model.saturated(w));
  if (open.length === 0) return { kind: 'saturated' };
  let decision = rule === 'rechoose' ? routed.strategy.choose(routed.ctx, all) : routed.decision;
  let worker: Worker = all.find((w) => w.id === decision.worker.id) ?? all[0]!;
  let moved: Move | undefined;
  // Under overload a saturated pick is not joined, even while other workers have room: its engine
  // would queue the request first come, first served behind the work already there, where
  // priority no longer applies.
  if (rule !== 'keep' && !open.includes(worker)) {
    const alt = routed.strategy.choose(routed.ctx, open);
    const altWorker = open.find((w) => w.id === alt.worker.id) ?? open[0]!;
    const lostBlocks = cachedBlocksOf(decision, worker.id) - cachedBlocksOf(alt, altWorker.id);
    // Nor is "wherever there is room" taken: under overload room is taken the moment it opens, so
    // conversations would scatter from their cache, and each move recomputes a prefix the fleet
    // had, capacity taken from everyone queued. Whether to move, join the pick or wait for room
    // there is decided on predicted TTFTs (see affinityChoice); `affinityWaitMs` caps every wait
    // (a pick whose queue does not drain as predicted); a move that loses nothing is made at once.
    const choice =
      lostBlocks > 0
        ? affinityChoice(
            routed,
            model,
            blockSize,
            lostBlocks,
            affinity,
            { decision, worker },
            { decision: alt, worker: altWorker },
          )
        : 'move';
    if (choice === 'join') return { ...go(routed, model, decision, worker, blockSize), joined: true };
    if (choice === 'wait' && affinity.waitedMs < affinity.maxMs) return { kind: 'affinity' };
    const reason: MoveReason =
      lostBlocks <= 0 ? 'free' : choice === 'wait' ? 'waited' : affinity.uncontested ? 'uncontested' : 'faster';
    moved = { from: worker.id, lostBlocks: Math.max(0, lostBlocks), reason };
    decision = alt;
    worker = altWorker;
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
  return go(routed, model, decision, worker, blockSize, moved);
}

function go(
  routed: Routed,
  model: TtftModel,
  decision: Decision,
  worker: Worker,
  blockSize: number,
  moved?: Move,
): Placement & { kind: 'go' } {
  const out = worker === routed.worker && decision === routed.decision ? routed : { ...routed, worker, decision };
  return {
    kind: 'go',
    routed: out,
    prefillTokens: model.queuedPrefill(worker) + uncached(routed, decision, worker.id, blockSize),
    ...(moved ? { moved } : {}),
  };
}

/**
 * A request whose cache-holding pick is saturated while `alt` has room, moving there giving up
 * `lostBlocks`: does it move now, join its pick now, or wait in the gateway for room there?
 * Joining now or waiting for room cost it about the same (the pick's queue drains either way),
 * `stay`; moving costs it `move`, and the recomputation of its lost prefix takes capacity from
 * whoever would use the room on `alt` next: requests of its class or a higher one (contested),
 * or, `uncontested`, only a lower class or nobody, whose loss does not count against it. So it
 * moves when that saves it more than the recomputation costs (a long prompt ahead of it on its
 * pick; uncontested, as soon as moving is faster), and otherwise stays: it joins when the work it
 * adds to its pick's engine queue, where priority no longer applies, is within
 * `saturation.affinityOverflow`, else it waits, and the choice is made again at every release.
 */
function affinityChoice(
  routed: Routed,
  model: TtftModel,
  blockSize: number,
  lostBlocks: number,
  affinity: AffinityWait,
  pick: { decision: Decision; worker: Worker },
  alt: { decision: Decision; worker: Worker },
): 'move' | 'join' | 'wait' {
  const own = uncached(routed, pick.decision, pick.worker.id, blockSize);
  const stayMs = model.predictMs(pick.worker, own);
  const moveMs = model.predictMs(alt.worker, uncached(routed, alt.decision, alt.worker.id, blockSize));
  const recomputeMs = affinity.uncontested ? 0 : model.prefillMs(alt.worker.id, lostBlocks * blockSize);
  if (!affinity.overShare && stayMs > moveMs + recomputeMs) return 'move';
  return model.mayJoin(pick.worker, own) ? 'join' : 'wait';
}

/**
 * Cached blocks the routed worker holds beyond any other candidate: what makes it this request's
 * worker. Asked only when a release looks for a request whose cache is where room opened.
 */
export function ownBlocks(routed: Routed): number {
  const { decision, worker } = routed;
  let others = 0;
  for (const w of routed.candidates) if (w.id !== worker.id) others = Math.max(others, cachedBlocksOf(decision, w.id));
  return Math.max(0, cachedBlocksOf(decision, worker.id) - others);
}

/** Predicted TTFT for every candidate of a routed request (`/debug/route`). */
export function predictions(routed: Routed, model: TtftModel, blockSize: number): TtftPrediction[] {
  return routed.candidates.map((w) =>
    model.explain(w, uncached(routed, routed.decision, w.id, blockSize), cachedBlocksOf(routed.decision, w.id)),
  );
}
