import type { KvTier } from '../events/types.js';

/** A routing target: `workerId`, or `workerId#rank` for data-parallel rank `rank`. */
export type TargetKey = string;

export function targetKey(workerId: string, dpRank: number | null): TargetKey {
  return dpRank === null || dpRank === undefined ? workerId : `${workerId}#${dpRank}`;
}

/** Inverse of `targetKey`: only a trailing `#<digits>` is read as a rank. */
export function parseTargetKey(key: TargetKey): { workerId: string; dpRank: number | null } {
  const i = key.lastIndexOf('#');
  if (i > 0 && i < key.length - 1 && /^\d+$/.test(key.slice(i + 1))) {
    return { workerId: key.slice(0, i), dpRank: Number(key.slice(i + 1)) };
  }
  return { workerId: key, dpRank: null };
}

/** Leading blocks of a prompt a target holds (any tier); of those, how many on GPU. */
export interface MatchCounts {
  blocks: number;
  gpuBlocks: number;
  /**
   * Of `blocks`, the leading ones up to the deepest block from which at least
   * `SHARED_PREFIX_CHILDREN` different continuations are cached (by any target):
   * a prefix several request streams share, such as a system prompt. Absent = 0.
   */
  sharedBlocks?: number;
}

/**
 * Continuations that make a block a shared prefix. A conversation's turn boundary
 * has up to two (the engine's own output and the next turn's prompt, which can
 * differ when a chat template re-renders the answer), a retried or regenerated
 * turn adds one, a document asked a few questions a few more: keeping those on
 * one worker saves cache capacity. A system prompt that many users share soon has
 * far more. On the whole Mooncake replay a lower threshold traded a little hit
 * rate for a little mean TTFT and no threshold changed little (that comparison is
 * not kept in bench/results/; `npm run bench:replay` reruns it); at 8 a restarted
 * worker still gets its share back at once (bench/results/fault-run.md).
 */
export const SHARED_PREFIX_CHILDREN = 8;

export interface RadixIndexOptions {
  /** Node cap; when full, new nodes are refused and counted in `rejectedInserts`. */
  maxNodes?: number | undefined;
}

export interface RadixIndexStats {
  nodes: number;
  maxNodes: number;
  /** Blocks not indexed because the node cap was reached. */
  rejectedInserts: number;
  /** Inserts whose parent block was not in the index (nothing inserted). */
  unknownParents: number;
  targets: number;
  blocksPerTarget: Record<TargetKey, number>;
  /** Bytes held by the node store and the hash table (excluding small JS objects). */
  approxBytes: number;
}

export const TIER_GPU = 1;
export const TIER_CPU = 2;
export const ALL_TIERS = 3;

export function tierFlag(tier: KvTier): number {
  return tier === 'cpu' ? TIER_CPU : TIER_GPU;
}

export const DEFAULT_MAX_NODES = 4_000_000;
