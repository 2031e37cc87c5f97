import type { KvTier } from '../events/types.js';
import { SCRATCH32, SCRATCH64, U64Table, joinU64, splitU64 } from './u64-table.js';
import { ALL_TIERS, DEFAULT_MAX_NODES, SHARED_PREFIX_CHILDREN, TIER_GPU, tierFlag } from './radix-types.js';
import type { MatchCounts, RadixIndexOptions, RadixIndexStats, TargetKey } from './radix-types.js';
import { FREE, F_CHILDREN, F_EXTRA, F_HI, F_HINT, F_LO, F_PARENT, F_T0, F_T1, STRIDE } from './radix-holders.js';
import { addHolder, dropHolder } from './radix-holders.js';

export * from './radix-types.js';

/**
 * Prefix tree of KV blocks keyed by our chained block hash (see block-hash.ts).
 * Since a hash identifies its whole prefix, a node is found by hash alone (one
 * table lookup) and the tree needs only parent links and child counts. A node
 * with no holders and no children is freed at once, cascading up.
 *
 * Holders are small target ids with tier flags; the first two are stored
 * inline, so the common cases (one or two holders per block) cost no JS object.
 *
 * Bounded: at `maxNodes` new nodes are refused (counted), existing nodes still
 * gain holders. Engines report their own evictions, so the index shrinks by
 * itself; the cap only stops a leak (missed removals) from growing without
 * bound, and `rejectedInserts` says when it bites. Refusing instead of
 * evicting keeps the per-target engine-hash maps of `KvIndexer` exact.
 */
export class RadixIndex {
  #nd: Int32Array;
  #nodeCap: number;
  #bump = 0;
  #count = 0;
  readonly #freeList: number[] = [];
  readonly #table = new U64Table(1024);
  readonly #extra = new Map<number, number[]>();
  readonly #maxNodes: number;
  #rejected = 0;
  #unknownParents = 0;

  readonly #ids = new Map<TargetKey, number>();
  #names: TargetKey[] = [];
  #blocks: number[] = [];
  readonly #freeIds: number[] = [];

  // Scratch for `match`, sized to the number of target ids.
  #actId = new Int32Array(16);
  #actGpu = new Int32Array(16);
  #stamp = new Int32Array(16);
  #stampFlags = new Uint8Array(16);
  #epoch = 0;
  readonly #hl = new Uint32Array(2);

  constructor(options: RadixIndexOptions = {}) {
    const max = options.maxNodes ?? DEFAULT_MAX_NODES;
    if (!Number.isInteger(max) || max <= 0) throw new RangeError(`maxNodes must be a positive integer, got ${max}`);
    this.#maxNodes = max;
    this.#nodeCap = Math.min(max, 1024);
    this.#nd = new Int32Array(this.#nodeCap * STRIDE);
  }

  get size(): number {
    return this.#count;
  }

  /** Blocks (nodes) `target` holds on any tier. */
  blocksOf(target: TargetKey): number {
    const id = this.#ids.get(target);
    return id === undefined ? 0 : this.#blocks[id]!;
  }

  /** Inserts a chain of our block hashes under `parent` (our hash, undefined = root) for `target`, on `tier`. Returns the blocks indexed. */
  insert(target: TargetKey, parent: bigint | undefined, hashes: readonly bigint[], tier: KvTier): number {
    let p = -1;
    const hl = this.#hl;
    if (parent !== undefined) {
      splitU64(parent, hl);
      p = this.#table.get(hl[0]!, hl[1]!);
      if (p < 0) {
        this.#unknownParents++;
        return 0;
      }
    }
    const id = this.idOf(target, true);
    const flags = tierFlag(tier);
    let done = 0;
    for (let i = 0; i < hashes.length; i++) {
      SCRATCH64[0] = hashes[i]!;
      p = this.insertOne(id, p, SCRATCH32[0]!, SCRATCH32[1]!, flags);
      if (p < 0) break;
      done++;
    }
    return done;
  }

  /** Drops `target`'s hold on these blocks (one tier, or all). Returns the blocks it no longer holds. */
  remove(target: TargetKey, hashes: readonly bigint[], tier?: KvTier): number {
    const id = this.#ids.get(target);
    if (id === undefined) return 0;
    const mask = tier === undefined ? ALL_TIERS : tierFlag(tier);
    const hl = this.#hl;
    let removed = 0;
    for (const h of hashes) {
      splitU64(h, hl);
      const n = this.#table.get(hl[0]!, hl[1]!);
      if (n >= 0 && this.dropFromNode(n, id, mask) === 0) removed++;
    }
    return removed;
  }

  /** Drops everything `target` holds. Scans all nodes unless it holds none (rare: engine reset/restart). */
  clearTarget(target: TargetKey): void {
    const id = this.#ids.get(target);
    if (id === undefined) return;
    if (this.#blocks[id]! > 0) {
      const nd = this.#nd;
      for (let n = 0; n < this.#bump; n++) {
        if (nd[n * STRIDE + F_PARENT] !== FREE) this.dropFromNode(n, id, ALL_TIERS);
      }
    }
    this.#ids.delete(target);
    this.#names[id] = '';
    this.#blocks[id] = 0;
    this.#freeIds.push(id);
  }

  /**
   * Per target, how many LEADING blocks of `hashes` it holds (a target missing
   * block i counts i, whatever it holds later), and how many of those are a
   * shared prefix (`MatchCounts.sharedBlocks`). One walk from the root that
   * stops as soon as no target is left.
   */
  match(hashes: readonly bigint[]): Map<TargetKey, MatchCounts> {
    const out = new Map<TargetKey, MatchCounts>();
    const n = hashes.length;
    if (n === 0 || this.#count === 0) return out;
    const nd = this.#nd;
    const hl = this.#hl;
    splitU64(hashes[0]!, hl);
    let cur = this.#table.get(hl[0]!, hl[1]!);
    if (cur < 0 || nd[cur * STRIDE + F_PARENT] !== -1) return out;
    let shared = nd[cur * STRIDE + F_CHILDREN]! >= SHARED_PREFIX_CHILDREN ? 1 : 0;
    const actId = this.#actId;
    const actGpu = this.#actGpu;
    let na = 0;
    for (let f = F_T0; f <= F_T1; f++) {
      const e = nd[cur * STRIDE + f]!;
      if (e === -1) break;
      actId[na] = e >>> 2;
      actGpu[na++] = e & TIER_GPU;
    }
    if (nd[cur * STRIDE + F_EXTRA]! > 0) {
      for (const e of this.#extra.get(cur)!) {
        actId[na] = e >>> 2;
        actGpu[na++] = e & TIER_GPU;
      }
    }
    let i = 1;
    for (; i < n && na > 0; i++) {
      SCRATCH64[0] = hashes[i]!;
      const lo = SCRATCH32[0]! | 0;
      const hi = SCRATCH32[1]! | 0;
      let next = nd[cur * STRIDE + F_HINT]!;
      if (next < 0 || nd[next * STRIDE + F_LO] !== lo || nd[next * STRIDE + F_HI] !== hi) {
        next = this.#table.get(lo, hi);
        if (next < 0 || nd[next * STRIDE + F_PARENT] !== cur) break;
      }
      const b = next * STRIDE;
      const h0 = nd[b + F_T0]!;
      const h1 = nd[b + F_T1]!;
      let k = 0;
      if (nd[b + F_EXTRA] === 0) {
        // At most two holders, inline: no stamping needed.
        const id0 = h0 === -1 ? -1 : h0 >>> 2;
        const id1 = h1 === -1 ? -1 : h1 >>> 2;
        for (let a = 0; a < na; a++) {
          const id = actId[a]!;
          if (id === id0) {
            actId[k] = id;
            actGpu[k++] = actGpu[a]! + (h0 & TIER_GPU);
          } else if (id === id1) {
            actId[k] = id;
            actGpu[k++] = actGpu[a]! + (h1 & TIER_GPU);
          } else this.#finish(out, id, i, actGpu[a]!, shared);
        }
      } else {
        const ep = this.#nextEpoch();
        const stamp = this.#stamp;
        const sf = this.#stampFlags;
        stamp[h0 >>> 2] = ep;
        sf[h0 >>> 2] = h0 & 3;
        stamp[h1 >>> 2] = ep;
        sf[h1 >>> 2] = h1 & 3;
        for (const e of this.#extra.get(next)!) {
          stamp[e >>> 2] = ep;
          sf[e >>> 2] = e & 3;
        }
        for (let a = 0; a < na; a++) {
          const id = actId[a]!;
          if (stamp[id] === ep) {
            actId[k] = id;
            actGpu[k++] = actGpu[a]! + (sf[id]! & TIER_GPU);
          } else this.#finish(out, id, i, actGpu[a]!, shared);
        }
      }
      na = k;
      cur = next;
      if (nd[b + F_CHILDREN]! >= SHARED_PREFIX_CHILDREN) shared = i + 1;
    }
    for (let a = 0; a < na; a++) this.#finish(out, actId[a]!, i, actGpu[a]!, shared);
    return out;
  }

  stats(): RadixIndexStats {
    const blocksPerTarget: Record<TargetKey, number> = {};
    for (const [key, id] of this.#ids) blocksPerTarget[key] = this.#blocks[id]!;
    return {
      nodes: this.#count,
      maxNodes: this.#maxNodes,
      rejectedInserts: this.#rejected,
      unknownParents: this.#unknownParents,
      targets: this.#ids.size,
      blocksPerTarget,
      approxBytes: this.#nd.byteLength + this.#table.capacity * 16,
    };
  }

  // ---- Node-level API for KvIndexer and ApproxIndex (same package). ----

  /** Small integer id of a target; -1 if unknown and `create` is false. */
  idOf(target: TargetKey, create: boolean): number {
    const known = this.#ids.get(target);
    if (known !== undefined || !create) return known ?? -1;
    const id = this.#freeIds.pop() ?? this.#names.length;
    this.#names[id] = target;
    this.#blocks[id] = 0;
    this.#ids.set(target, id);
    if (id >= this.#actId.length) {
      const len = this.#actId.length * 2;
      this.#actId = new Int32Array(len);
      this.#actGpu = new Int32Array(len);
      const st = new Int32Array(len);
      st.set(this.#stamp);
      this.#stamp = st;
      this.#stampFlags = new Uint8Array(len);
    }
    return id;
  }

  /** Node holding our hash (lo, hi), or -1. */
  lookup(lo: number, hi: number): number {
    return this.#table.get(lo, hi);
  }

  /** Low half of a node's hash as int32 (a cheap check that a node index still means the same block). */
  nodeLo(node: number): number {
    return this.#nd[node * STRIDE + F_LO]!;
  }

  isLive(node: number): boolean {
    return node >= 0 && node < this.#bump && this.#nd[node * STRIDE + F_PARENT] !== FREE;
  }

  nodeHash(node: number): bigint {
    return joinU64(this.#nd[node * STRIDE + F_LO]!, this.#nd[node * STRIDE + F_HI]!);
  }

  /** Adds holder `id` with `flags` to the block (lo, hi) under `parentNode` (-1 root). Returns the node, or -1 when the cap refused it. One table probe. */
  insertOne(id: number, parentNode: number, lo: number, hi: number, flags: number): number {
    const table = this.#table;
    const slot = table.probe(lo, hi);
    let n: number;
    if (slot < 0) {
      if (this.#count >= this.#maxNodes) {
        this.#rejected++;
        return -1;
      }
      n = this.#allocNode(lo, hi, parentNode);
      table.fill(~slot, lo, hi, n);
    } else if ((n = table.valueAt(slot)) < 0) {
      return -1; // unreachable: stored values are node indices
    } else if (parentNode >= 0 && this.#nd[n * STRIDE + F_PARENT] === parentNode) {
      // Point the parent's hint at the most recently stored path.
      this.#nd[parentNode * STRIDE + F_HINT] = n;
    }
    if (addHolder(this.#nd, this.#extra, n, id, flags)) this.#blocks[id]!++;
    return n;
  }

  /** Adds tiers `flags` of holder `id` to an existing `node`. */
  addToNode(node: number, id: number, flags: number): void {
    if (addHolder(this.#nd, this.#extra, node, id, flags)) this.#blocks[id]!++;
  }

  /**
   * Clears `mask` tiers of holder `id` on `node`. Returns the tiers it still
   * holds there, 0 if it no longer holds the block, -1 if it never did.
   */
  dropFromNode(node: number, id: number, mask: number): number {
    const rest = dropHolder(this.#nd, this.#extra, node, id, mask);
    if (rest !== 0) return rest;
    this.#blocks[id]!--;
    const b = node * STRIDE;
    if (this.#nd[b + F_T0] === -1 && this.#nd[b + F_CHILDREN] === 0) this.#freeNode(node);
    return 0;
  }

  // ---- internals ----

  #finish(out: Map<TargetKey, MatchCounts>, id: number, blocks: number, gpuBlocks: number, sharedBlocks: number): void {
    if (blocks > 0)
      out.set(this.#names[id]!, sharedBlocks > 0 ? { blocks, gpuBlocks, sharedBlocks } : { blocks, gpuBlocks });
  }

  #nextEpoch(): number {
    if (this.#epoch === 0x7fffffff) {
      this.#stamp.fill(0);
      this.#epoch = 0;
    }
    return ++this.#epoch;
  }

  #allocNode(lo: number, hi: number, parent: number): number {
    let n = this.#freeList.pop();
    if (n === undefined) {
      if (this.#bump === this.#nodeCap) this.#growNodes();
      n = this.#bump++;
    }
    const nd = this.#nd;
    const b = n * STRIDE;
    nd[b + F_LO] = lo;
    nd[b + F_HI] = hi;
    nd[b + F_PARENT] = parent;
    nd[b + F_CHILDREN] = 0;
    nd[b + F_T0] = -1;
    nd[b + F_T1] = -1;
    nd[b + F_HINT] = -1;
    nd[b + F_EXTRA] = 0;
    this.#count++;
    if (parent >= 0) {
      nd[parent * STRIDE + F_CHILDREN]!++;
      nd[parent * STRIDE + F_HINT] = n;
    }
    return n;
  }

  /** Frees `n` and every ancestor left with no holders and no children. */
  #freeNode(n: number): void {
    const nd = this.#nd;
    for (;;) {
      const b = n * STRIDE;
      this.#table.delete(nd[b + F_LO]!, nd[b + F_HI]!);
      const p = nd[b + F_PARENT]!;
      nd[b + F_PARENT] = FREE;
      this.#freeList.push(n);
      this.#count--;
      if (p < 0) return;
      const pb = p * STRIDE;
      nd[pb + F_CHILDREN]!--;
      if (nd[pb + F_HINT] === n) nd[pb + F_HINT] = -1;
      if (nd[pb + F_CHILDREN] !== 0 || nd[pb + F_T0] !== -1) return;
      n = p;
    }
  }

  #growNodes(): void {
    // By a quarter, not doubling: the store never shrinks, and a doubled one is up to half slack at its peak
    // (8 workers x 65,536 blocks: 32 MiB for 17 MiB of nodes). Copying is still amortised O(1) per node.
    const cap = Math.min(this.#maxNodes, Math.max(this.#nodeCap + 1024, Math.ceil(this.#nodeCap * 1.25)));
    const nd = new Int32Array(cap * STRIDE);
    nd.set(this.#nd);
    this.#nd = nd;
    this.#nodeCap = cap;
  }
}
