import type { MatchCounts } from '../../../indexer/index/radix-index.js';
import type { RouteContext, WorkerView } from './strategy.js';

export type { MatchCounts };

/**
 * What the KV strategies share: the matcher interface they read the index
 * through, the per-worker reduction of data-parallel targets, softmax sampling
 * and the "no blocks" note. Kept free of any index implementation so tests can
 * pass a fake matcher.
 */

/**
 * The slice of the KV index (events-fed `KvIndexer` or the routing-fed
 * `ApproxIndex`) a strategy needs. Keys are target keys (`targetKey` in
 * indexer/index/radix-index.ts): `workerId`, or `workerId#rank` for data-parallel rank `rank`.
 */
export interface PrefixMatcher {
  /** Per target, leading blocks of the prompt held (any tier) and how many of those are on GPU. */
  match(hashes: readonly bigint[]): Map<string, MatchCounts>;
  /**
   * Blocks indexed for a target (its tree size), for Dynamo's smaller-tree
   * tie-break. Optional; `KvIndexer` calls it `blocksOf`, `ApproxIndex` `treeSize`.
   */
  blocksOf?(target: string): number;
  treeSize?(target: string): number;
}

/** The matcher's tree-size function under either name, bound; undefined when it has none. */
export function treeSizeOf(matcher: PrefixMatcher | undefined): ((target: string) => number) | undefined {
  if (matcher?.blocksOf) return (target) => matcher.blocksOf!(target);
  if (matcher?.treeSize) return (target) => matcher.treeSize!(target);
  return undefined;
}

/** Narrows a `StrategyDeps.services` entry to a matcher; anything else counts as absent. */
export function asPrefixMatcher(service: unknown): PrefixMatcher | undefined {
  return typeof (service as PrefixMatcher | undefined)?.match === 'function' ? (service as PrefixMatcher) : undefined;
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
 * Samples an index with `p_i ∝ exp(−(c_i − c_min) / ((c_max − c_min) · T))`,
 * Dynamo's softmax over min-max normalised costs (lower cost, likelier), so T
 * means the same whatever the scale of the costs. Uniform when all are equal.
 */
export function softmaxSample(costs: ArrayLike<number>, temperature: number, random: () => number): number {
  const n = costs.length;
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const c = costs[i]!;
    if (c < min) min = c;
    if (c > max) max = c;
  }
  if (!(max > min)) return Math.min(n - 1, Math.floor(random() * n));
  const scale = 1 / ((max - min) * temperature);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp(-(costs[i]! - min) * scale);
  let r = random() * sum;
  for (let i = 0; i < n; i++) {
    r -= Math.exp(-(costs[i]! - min) * scale);
    if (r < 0) return i;
  }
  return n - 1;
}

/** Equal within float noise: costs are sums of fractions of blocks. */
export function sameCost(a: number, b: number): boolean {
  return Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a), Math.abs(b));
}

/** Rounds a term for display in `explain`/`candidates` without hiding real differences. */
export function round(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}

/** Least in-flight requests, ties at random (reservoir sampling over the tied set). */
export function leastInflight(ctx: RouteContext, candidates: readonly WorkerView[]): WorkerView {
  let best = candidates[0]!;
  let ties = 1;
  for (let i = 1; i < candidates.length; i++) {
    const w = candidates[i]!;
    const d = w.load.inflightRequests - best.load.inflightRequests;
    if (d < 0) {
      best = w;
      ties = 1;
    } else if (d === 0 && ctx.random() * ++ties < 1) {
      best = w;
    }
  }
  return best;
}
