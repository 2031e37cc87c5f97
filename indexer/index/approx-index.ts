import type { KvIndex, RoutedBlocks } from './kv-index.js';
import {
  ALL_TIERS,
  parseTargetKey,
  RadixIndex,
  targetKey,
  TIER_GPU,
  type MatchCounts,
  type TargetKey,
} from './radix-index.js';
import { U64Table, splitU64 } from './u64-table.js';

export interface ApproxIndexOptions {
  /** How long a routed prompt's blocks are assumed cached (Dynamo's approximate mode: 120 s). */
  ttlMs?: number;
  /** Bound on remembered (target, block) pairs; the oldest records expire early beyond it. */
  maxBlocks?: number;
  now?: () => number;
}

export interface ApproxIndexStats {
  nodes: number;
  /** Routing records still remembered. */
  records: number;
  /** Blocks those records cover. */
  recordedBlocks: number;
  /** Records dropped because their TTL passed. */
  expired: number;
  /** Records dropped before their TTL to stay within `maxBlocks`. */
  evictedEarly: number;
  rejectedInserts: number;
}

interface RoutingRecord {
  readonly target: TargetKey;
  readonly gen: number;
  readonly expiresAt: number;
  /** Our hashes as (lo, hi) pairs: 8 bytes a block, no reference to the caller's array. */
  readonly halves: Uint32Array;
}

/**
 * The index for workers that publish no KV events, predicted from the
 * gateway's own routing decisions: a routed prompt's blocks are assumed
 * cached on its target for `ttlMs`. Routing the same prefix again renews it.
 *
 * Expiry is lazy (swept on `record` and `match`) from a FIFO of records; per
 * target, each block remembers the generation of its latest record, so only
 * the latest record's expiry drops it.
 */
export class ApproxIndex implements KvIndex<RoutedBlocks> {
  readonly #index: RadixIndex;
  readonly #ttlMs: number;
  readonly #maxBlocks: number;
  readonly #now: () => number;
  readonly #latest = new Map<TargetKey, U64Table>();
  #queue: RoutingRecord[] = [];
  #head = 0;
  #recordedBlocks = 0;
  #gen = 0;
  #expired = 0;
  #evictedEarly = 0;
  readonly #hl = new Uint32Array(2);

  constructor(options: ApproxIndexOptions = {}) {
    this.#ttlMs = options.ttlMs ?? 120_000;
    this.#maxBlocks = options.maxBlocks ?? 1_000_000;
    if (!(this.#ttlMs > 0)) throw new RangeError(`ttlMs must be positive, got ${this.#ttlMs}`);
    if (!Number.isInteger(this.#maxBlocks) || this.#maxBlocks <= 0) {
      throw new RangeError(`maxBlocks must be a positive integer, got ${this.#maxBlocks}`);
    }
    this.#now = options.now ?? Date.now;
    this.#index = new RadixIndex({ maxNodes: this.#maxBlocks });
  }

  /** Remembers that `target` now caches the blocks `hashes` (a chain from the root). */
  record(target: TargetKey, hashes: readonly bigint[]): void {
    const now = this.#now();
    this.#sweep(now);
    const n = Math.min(hashes.length, this.#maxBlocks);
    if (n === 0) return;
    while (this.#recordedBlocks + n > this.#maxBlocks && this.#head < this.#queue.length) {
      this.#drop(this.#queue[this.#head++]!);
      this.#evictedEarly++;
    }
    this.#gen = (this.#gen + 1) & 0x7fffffff;
    const id = this.#index.idOf(target, true);
    let table = this.#latest.get(target);
    if (!table) this.#latest.set(target, (table = new U64Table(64)));
    const halves = new Uint32Array(2 * n);
    const hl = this.#hl;
    let parent = -1;
    let k = 0;
    for (; k < n; k++) {
      splitU64(hashes[k]!, hl);
      parent = this.#index.insertOne(id, parent, hl[0]!, hl[1]!, TIER_GPU);
      if (parent < 0) break;
      halves[2 * k] = hl[0]!;
      halves[2 * k + 1] = hl[1]!;
      table.set(hl[0]!, hl[1]!, this.#gen);
    }
    this.#queue.push({ target, gen: this.#gen, expiresAt: now + this.#ttlMs, halves: halves.subarray(0, 2 * k) });
    this.#recordedBlocks += k;
  }

  apply(workerId: string, batch: RoutedBlocks): void {
    this.record(targetKey(workerId, batch.dataParallelRank ?? null), batch.hashes);
  }

  match(hashes: readonly bigint[]): Map<TargetKey, MatchCounts> {
    this.#sweep(this.#now());
    return this.#index.match(hashes);
  }

  /** Blocks remembered for a target (Dynamo's smaller-tree tie-break). */
  treeSize(target: TargetKey): number {
    return this.#index.blocksOf(target);
  }

  blocksOf(target: TargetKey): number {
    return this.#index.blocksOf(target);
  }

  clearWorker(workerId: string): void {
    for (const target of [...this.#latest.keys()])
      if (parseTargetKey(target).workerId === workerId) this.clearTarget(target);
  }

  clearTarget(target: TargetKey): void {
    this.#latest.delete(target);
    this.#index.clearTarget(target);
  }

  get size(): number {
    return this.#index.size;
  }

  stats(): ApproxIndexStats {
    return {
      nodes: this.#index.size,
      records: this.#queue.length - this.#head,
      recordedBlocks: this.#recordedBlocks,
      expired: this.#expired,
      evictedEarly: this.#evictedEarly,
      rejectedInserts: this.#index.stats().rejectedInserts,
    };
  }

  #sweep(now: number): void {
    const q = this.#queue;
    while (this.#head < q.length && q[this.#head]!.expiresAt <= now) {
      this.#drop(q[this.#head++]!);
      this.#expired++;
    }
    if (this.#head > 1024 && this.#head * 2 > q.length) {
      this.#queue = q.slice(this.#head);
      this.#head = 0;
    }
  }

  /** Forgets a record's blocks, except those a later record of the same target renewed. */
  #drop(rec: RoutingRecord): void {
    this.#recordedBlocks -= rec.halves.length / 2;
    const table = this.#latest.get(rec.target);
    if (!table) return;
    const id = this.#index.idOf(rec.target, false);
    const h = rec.halves;
    for (let j = 0; j < h.length; j += 2) {
      const slot = table.find(h[j]!, h[j + 1]!);
      if (slot < 0 || table.valueAt(slot) !== rec.gen) continue;
      table.deleteSlot(slot);
      const node = this.#index.lookup(h[j]!, h[j + 1]!);
      if (node >= 0 && id >= 0) this.#index.dropFromNode(node, id, ALL_TIERS);
    }
    if (table.size === 0) this.clearTarget(rec.target);
  }
}
