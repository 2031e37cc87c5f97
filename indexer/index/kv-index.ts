import type { MatchCounts, TargetKey } from './radix-index.js';

/**
 * What every KV index offers routing and its feeders: the events-fed
 * `KvIndexer` (batches of engine events) and the routing-fed `ApproxIndex`
 * (batches of blocks the gateway just routed). Both key blocks by our own
 * chained hashes, so `match` means the same for both. `test/indexer/index/
 * index-contract.test.ts` holds both to the same contract.
 */
export interface KvIndex<Batch> {
  /** Per target, how many leading blocks of `hashes` it holds. */
  match(hashes: readonly bigint[]): Map<TargetKey, MatchCounts>;
  /** Blocks indexed for a target: a worker id, or `worker#rank` for one data-parallel rank. */
  blocksOf(target: TargetKey): number;
  /** Applies one batch from `workerId`; the batch says which data-parallel rank, if any. */
  apply(workerId: string, batch: Batch): void;
  /** Forgets everything about a worker, all its ranks. */
  clearWorker(workerId: string): void;
}

/** ApproxIndex's batch: a prompt's blocks the gateway routed to the worker (and rank). */
export interface RoutedBlocks {
  readonly hashes: readonly bigint[];
  readonly dataParallelRank?: number | null;
}
