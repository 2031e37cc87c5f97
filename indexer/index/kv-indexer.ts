import type { BlockHasher } from './block-hash.js';
import type { EventSink } from '../events/source.js';
import type { BlocksMoved, BlocksRemoved, BlocksStored, EngineBlockHash, KvEventBatch } from '../events/types.js';
import { EngineHashMap } from './engine-hash-map.js';
import type { KvIndex } from './kv-index.js';
import { ALL_TIERS, RadixIndex, targetKey, tierFlag, type MatchCounts, type TargetKey } from './radix-index.js';
import { SCRATCH32, SCRATCH64 } from './u64-table.js';

export interface KvIndexerOptions {
  hasher: BlockHasher;
  model: string;
  blockSize: number;
  maxNodes?: number;
  log?: { warn(obj: object, msg: string): void };
  now?: () => number;
}

export interface WorkerIndexStats {
  /** Blocks indexed for this worker, all ranks and tiers. */
  blocks: number;
  lastSeq: string | null;
  eventsApplied: number;
  blocksStored: number;
  blocksRemoved: number;
  /** Stored events skipped because their parent block was unknown for that target. */
  unknownParent: number;
  /** Removed engine hashes we did not know (e.g. their store was skipped). */
  unknownRemoved: number;
  /** Events skipped because their block size differs from the configured one. */
  blockSizeMismatch: number;
  /** Stored events whose token count did not equal blocks * blockSize. */
  malformed: number;
  /** Blocks not indexed because the node cap was reached. */
  rejectedBlocks: number;
  resets: number;
  /** Engine timestamp (s since epoch) of the last batch applied. */
  lastBatchTs: number | null;
  /** `now()` (ms) when the last batch was applied. */
  lastAppliedAt: number | null;
}

export interface KvIndexerStats {
  nodes: number;
  maxNodes: number;
  rejectedInserts: number;
  blockSizeMismatches: number;
  perWorker: Record<string, WorkerIndexStats>;
  perTarget: Record<TargetKey, number>;
}

interface TargetState {
  readonly key: TargetKey;
  readonly id: number;
  /** Engine hash -> our node, so `removed` (engine hashes only) resolves. */
  readonly engine: EngineHashMap;
}

interface WorkerState {
  readonly targets: Map<number, TargetState>;
  readonly stats: Omit<WorkerIndexStats, 'blocks'>;
  warnedBlockSize: boolean;
}

const NO_RANK = -1;

/**
 * The event-fed KV index: applies each worker's engine events to one
 * RadixIndex of our own block hashes, and answers `match` for routing.
 *
 * Stored blocks are re-hashed from their token ids (engine hashes are opaque
 * and engine-specific); the engine hash is kept per target only to resolve
 * later removals and parent links. Known limitation: two engine hashes with
 * equal tokens (engine-side extra keys such as multimodal ids or cache_salt)
 * share one node; removing either drops the hold. That can only under-count
 * a match, never invent one.
 */
export class KvIndexer implements KvIndex<KvEventBatch> {
  readonly #hasher: BlockHasher;
  readonly #model: string;
  readonly #blockSize: number;
  readonly #log: { warn(obj: object, msg: string): void } | undefined;
  readonly #now: () => number;
  readonly #index: RadixIndex;
  readonly #workers = new Map<string, WorkerState>();
  readonly #seeds = new Map<string, bigint>();
  readonly #baseSeed: bigint;
  #blockSizeMismatches = 0;

  constructor(options: KvIndexerOptions) {
    if (!Number.isInteger(options.blockSize) || options.blockSize <= 0) {
      throw new RangeError(`blockSize must be a positive integer, got ${options.blockSize}`);
    }
    this.#hasher = options.hasher;
    this.#model = options.model;
    this.#blockSize = options.blockSize;
    this.#log = options.log;
    this.#now = options.now ?? Date.now;
    this.#index = new RadixIndex({ maxNodes: options.maxNodes });
    this.#baseSeed = this.#hasher.seedFor(this.#model, null);
  }

  /** The sink an EventSource for `workerId` feeds. */
  sinkFor(workerId: string): EventSink {
    return {
      apply: (batch) => this.apply(workerId, batch),
      reset: (_reason, rank) => this.#resetWorker(workerId, rank),
    };
  }

  /** Forgets everything about a worker (all its data-parallel ranks). */
  clearWorker(workerId: string): void {
    const w = this.#workers.get(workerId);
    if (!w) return;
    for (const t of w.targets.values()) this.#clearTargetState(t);
    w.targets.clear();
  }

  match(hashes: readonly bigint[]): Map<TargetKey, MatchCounts> {
    return this.#index.match(hashes);
  }

  /** Seed for this model and an optional LoRA adapter (cached). */
  seedFor(loraName?: string | null): bigint {
    if (!loraName) return this.#baseSeed;
    let s = this.#seeds.get(loraName);
    if (s === undefined) {
      s = this.#hasher.seedFor(this.#model, loraName);
      this.#seeds.set(loraName, s);
    }
    return s;
  }

  /** Blocks indexed for a target (a worker, or one of its ranks). */
  blocksOf(target: TargetKey): number {
    return this.#index.blocksOf(target);
  }

  /** Same as `blocksOf`, under the name strategies' `PrefixMatcher` uses (Dynamo's smaller-tree tie-break). */
  treeSize(target: TargetKey): number {
    return this.#index.blocksOf(target);
  }

  stats(): KvIndexerStats {
    const idx = this.#index.stats();
    const perWorker: Record<string, WorkerIndexStats> = {};
    for (const [workerId, w] of this.#workers) {
      let blocks = 0;
      for (const t of w.targets.values()) blocks += this.#index.blocksOf(t.key);
      perWorker[workerId] = { blocks, ...w.stats };
    }
    return {
      nodes: idx.nodes,
      maxNodes: idx.maxNodes,
      rejectedInserts: idx.rejectedInserts,
      blockSizeMismatches: this.#blockSizeMismatches,
      perWorker,
      perTarget: idx.blocksPerTarget,
    };
  }

  // ---- applying events ----

  #worker(workerId: string): WorkerState {
    let w = this.#workers.get(workerId);
    if (!w) {
      w = {
        targets: new Map(),
        warnedBlockSize: false,
        stats: {
          lastSeq: null,
          eventsApplied: 0,
          blocksStored: 0,
          blocksRemoved: 0,
          unknownParent: 0,
          unknownRemoved: 0,
          blockSizeMismatch: 0,
          malformed: 0,
          rejectedBlocks: 0,
          resets: 0,
          lastBatchTs: null,
          lastAppliedAt: null,
        },
      };
      this.#workers.set(workerId, w);
    }
    return w;
  }

  #target(workerId: string, w: WorkerState, dpRank: number | null): TargetState {
    const rank = dpRank ?? NO_RANK;
    let t = w.targets.get(rank);
    if (!t) {
      const key = targetKey(workerId, dpRank);
      t = { key, id: this.#index.idOf(key, true), engine: new EngineHashMap() };
      w.targets.set(rank, t);
    }
    return t;
  }

  apply(workerId: string, batch: KvEventBatch): void {
    const w = this.#worker(workerId);
    let t = this.#target(workerId, w, batch.dataParallelRank);
    for (const ev of batch.events) {
      if (ev.kind === 'stored') this.#applyStored(workerId, w, t, ev);
      else if (ev.kind === 'removed') this.#applyRemoved(w, t, ev);
      else if (ev.kind === 'moved') this.#applyMoved(w, t, ev);
      else {
        this.#clearTargetState(t);
        w.targets.delete(batch.dataParallelRank ?? NO_RANK);
        t = this.#target(workerId, w, batch.dataParallelRank);
      }
      w.stats.eventsApplied++;
    }
    w.stats.lastSeq = batch.seq.toString();
    w.stats.lastBatchTs = batch.ts;
    w.stats.lastAppliedAt = this.#now();
  }

  #applyStored(workerId: string, w: WorkerState, t: TargetState, ev: BlocksStored): void {
    const bs = this.#blockSize;
    if (ev.blockSize !== bs) {
      w.stats.blockSizeMismatch++;
      this.#blockSizeMismatches++;
      if (!w.warnedBlockSize) {
        w.warnedBlockSize = true;
        this.#log?.warn(
          { worker: workerId, configuredBlockSize: bs, eventBlockSize: ev.blockSize },
          "KV event block size differs from the configured block size: this worker's events are ignored and its prefix cache is invisible to routing; set the gateway block size to the engine's",
        );
      }
      return;
    }
    let parent = -1;
    let parentHash: bigint | undefined;
    if (ev.parentEngineHash !== null) {
      parent = this.#resolve(t, ev.parentEngineHash);
      if (parent < 0) {
        w.stats.unknownParent++;
        return;
      }
      parentHash = this.#index.nodeHash(parent);
    }
    const n = ev.engineHashes.length;
    if (ev.tokenIds.length !== n * bs) w.stats.malformed++;
    const ours = this.#hasher.hashBlocks(ev.tokenIds, bs, this.seedFor(ev.loraName), parentHash, ev.cacheSalt);
    const full = Math.min(n, ours.length);
    const flags = tierFlag(ev.tier);
    const index = this.#index;
    const engine = t.engine;
    let i = 0;
    for (; i < full; i++) {
      SCRATCH64[0] = ours[i]!;
      const lo = SCRATCH32[0]!;
      const node = index.insertOne(t.id, parent, lo, SCRATCH32[1]!, flags);
      if (node < 0) {
        w.stats.rejectedBlocks += full - i;
        break;
      }
      const prev = engine.put(ev.engineHashes[i]!, node, EngineHashMap.checkOf(lo));
      // An engine hash re-stored with other content: release the old block (if still the one mapped).
      if (
        prev >= 0 &&
        prev !== node &&
        index.isLive(prev) &&
        EngineHashMap.checkOf(index.nodeLo(prev)) === engine.lastCheck
      ) {
        index.dropFromNode(prev, t.id, ALL_TIERS);
      }
      parent = node;
    }
    w.stats.blocksStored += i;
  }

  #applyMoved(w: WorkerState, t: TargetState, ev: BlocksMoved): void {
    const flag = tierFlag(ev.tier);
    for (const h of ev.engineHashes) {
      const node = this.#resolve(t, h);
      if (node < 0) {
        w.stats.unknownRemoved++;
        continue;
      }
      // Add the new tier before dropping the others, so the node is never briefly unheld (and freed).
      this.#index.addToNode(node, t.id, flag);
      if (!ev.copy) this.#index.dropFromNode(node, t.id, ALL_TIERS & ~flag);
    }
  }

  #applyRemoved(w: WorkerState, t: TargetState, ev: BlocksRemoved): void {
    const mask = ev.allTiers ? ALL_TIERS : tierFlag(ev.tier);
    for (const h of ev.engineHashes) {
      const node = this.#resolve(t, h);
      if (node < 0) {
        w.stats.unknownRemoved++;
        continue;
      }
      const rest = this.#index.dropFromNode(node, t.id, mask);
      if (rest <= 0) t.engine.delete(h);
      if (rest === 0) w.stats.blocksRemoved++;
    }
  }

  /** Our node for an engine hash of this target, or -1 (unknown, or stale and dropped). */
  #resolve(t: TargetState, h: EngineBlockHash): number {
    const found = t.engine.get(h);
    if (found < 0) return -1;
    if (this.#index.isLive(found) && EngineHashMap.checkOf(this.#index.nodeLo(found)) === t.engine.lastCheck)
      return found;
    t.engine.delete(h);
    return -1;
  }

  /** Drops a target's blocks through its engine map (no full scan) and releases its id. */
  #clearTargetState(t: TargetState): void {
    t.engine.forEachNode((node, check) => {
      if (this.#index.isLive(node) && EngineHashMap.checkOf(this.#index.nodeLo(node)) === check) {
        this.#index.dropFromNode(node, t.id, ALL_TIERS);
      }
    });
    t.engine.clear();
    // Scans the index only if some block was not reachable through the map.
    this.#index.clearTarget(t.key);
  }

  /** `rank` undefined: the whole worker; otherwise only that data-parallel rank's target. */
  #resetWorker(workerId: string, rank?: number | null): void {
    const w = this.#worker(workerId);
    w.stats.resets++;
    if (rank === undefined) return this.clearWorker(workerId);
    const t = w.targets.get(rank ?? NO_RANK);
    if (!t) return;
    this.#clearTargetState(t);
    w.targets.delete(rank ?? NO_RANK);
  }
}
