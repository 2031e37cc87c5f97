import type { CandidateScore, Decision, MatchCounts, PrefixMatcher, RouteContext, WorkerView } from './strategy.js';

export type { MatchCounts, PrefixMatcher };

/**
 * What the KV strategies share: the per-worker reduction of data-parallel
 * targets, the "no blocks" note and the end of a decision. Kept free of any
 * index implementation so tests can pass a fake matcher.
 */

/** The matcher's tree-size function under either name, bound; undefined when it has none. */
export function treeSizeOf(matcher: PrefixMatcher | undefined): ((target: string) => number) | undefined {
  if (matcher?.blocksOf) return (target) => matcher.blocksOf!(target);
  if (matcher?.treeSize) return (target) => matcher.treeSize!(target);
  return undefined;
}

/** The best data-parallel target of one worker for this prompt. */
export interface WorkerMatch {
  /** Target key of the best rank (the worker id when the index tracks no ranks). */
  target: string;
  rank: number | null;
  blocks: number;
  gpuBlocks: number;
  /** `gpuBlocks + cpuWeight × (blocks − gpuBlocks)`: what the reuse is worth, in GPU blocks. */
  weighted: number;
  /** Leading blocks that are a prefix several request streams share (`MatchCounts.sharedBlocks`). */
  sharedBlocks: number;
}

/**
 * Where `parseTargetKey` (indexer/index/radix-index.ts) would split a target key, without
 * allocating: the last `#` followed only by digits; -1 when the key has no rank.
 */
function rankSeparator(key: string): number {
  const i = key.lastIndexOf('#');
  if (i <= 0 || i === key.length - 1) return -1;
  for (let j = i + 1; j < key.length; j++) {
    const c = key.charCodeAt(j);
    if (c < 48 || c > 57) return -1;
  }
  return i;
}

/**
 * Reduces the index's per-target match to one entry per worker: the rank whose
 * weighted overlap is highest (ties to the lower rank, so the choice is stable).
 * `cpuWeight` is clamped to [0, 1]: an offloaded block is never worth more than a GPU one.
 */
export function bestMatchPerWorker(
  matches: ReadonlyMap<string, MatchCounts>,
  cpuWeight: number,
): Map<string, WorkerMatch> {
  const weight = cpuWeight < 0 ? 0 : cpuWeight > 1 ? 1 : cpuWeight;
  const out = new Map<string, WorkerMatch>();
  for (const [target, counts] of matches) {
    const sep = rankSeparator(target);
    const workerId = sep < 0 ? target : target.slice(0, sep);
    const rank = sep < 0 ? null : Number(target.slice(sep + 1));
    const gpu = Math.min(counts.gpuBlocks, counts.blocks);
    const weighted = gpu + weight * (counts.blocks - gpu);
    const prev = out.get(workerId);
    if (
      prev === undefined ||
      weighted > prev.weighted ||
      (weighted === prev.weighted && rank !== null && (prev.rank === null || rank < prev.rank))
    ) {
      out.set(workerId, {
        target,
        rank,
        blocks: counts.blocks,
        gpuBlocks: gpu,
        weighted,
        sharedBlocks: Math.min(counts.sharedBlocks ?? 0, counts.blocks),
      });
    }
  }
  return out;
}

/**
 * Matches the prompt once per request and reduces it per worker. Undefined
 * when there is nothing to match against (no blocks, no matcher, or a prompt
 * shorter than one block), which callers treat as zero overlap everywhere.
 */
export function matchWorkers(
  ctx: RouteContext,
  matcher: PrefixMatcher | undefined,
  cpuWeight: number,
): Map<string, WorkerMatch> | undefined {
  const hashes = ctx.blocks?.hashes;
  if (!matcher || !hashes || hashes.length === 0) return undefined;
  return bestMatchPerWorker(matcher.match(hashes), cpuWeight);
}

/** Says in `explain` why overlap is zero, so `/debug/route` is never silent about it. */
export function overlapSource(ctx: RouteContext, matcher: PrefixMatcher | undefined, indexName: string): string {
  if (!ctx.blocks) return 'no prompt blocks (prompt not tokenized): overlap treated as 0';
  if (!matcher) return `no ${indexName} configured: overlap treated as 0`;
  return indexName;
}

/**
 * A KV strategy's decision for `worker`: the blocks its best rank holds are the
 * predicted cache hit, and that rank is the data-parallel target. `explain`
 * gets the worker's match, for terms that depend on it.
 */
export function matchDecision(
  worker: WorkerView,
  matches: ReadonlyMap<string, WorkerMatch> | undefined,
  candidates: CandidateScore[],
  explain: (match: WorkerMatch | undefined) => Record<string, unknown>,
): Decision {
  const m = matches?.get(worker.id);
  const decision: Decision = { worker, explain: explain(m), predictedCachedBlocks: m?.blocks ?? 0, candidates };
  if (m?.rank != null) decision.dataParallelRank = m.rank;
  return decision;
}
