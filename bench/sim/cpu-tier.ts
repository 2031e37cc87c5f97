import { LRUCache } from 'lru-cache';
import type { KvEvent } from '../../indexer/events/types.js';

export interface CpuTierOptions {
  /** Host-memory capacity in blocks (vLLM's `num_cpu_blocks`); 0 = no CPU tier. */
  numBlocks: number;
  /** Host-to-device bandwidth, GB/s (see `loadMsPerBlock`). */
  pcieGBps: number;
  /** KV bytes per token (Qwen3-0.6B bf16: 114,688). */
  bytesPerToken: number;
  blockSize: number;
  /** Divides transfer times like every other simulated duration. */
  speedup: number;
  now?: () => number;
}

/** vLLM OffloadingConnector defaults as the simulator models them: PCIe 4.0 x16 at ~25 GB/s effective. */
export const CPU_TIER_DEFAULTS = { pcieGBps: 25 } as const;

/**
 * Copying one block back costs its bytes over PCIe: blockSize × bytesPerToken
 * / bandwidth. Qwen3-0.6B bf16, 16-token blocks: 16 × 114,688 B = 1.84 MB,
 * at 25 GB/s 0.073 ms a block, about a fifth of what prefilling those 16
 * tokens costs in the timing model (0.24 ms linear term alone, plus its
 * share of the quadratic and launch terms); a 4096-token prefix loads in
 * ~19 ms against an ~86 ms cold prefill.
 */
export function loadMsPerBlock(o: Pick<CpuTierOptions, 'pcieGBps' | 'bytesPerToken' | 'blockSize'>): number {
  return (o.blockSize * o.bytesPerToken) / (o.pcieGBps * 1e6);
}

export interface CpuTierStats {
  cpuBlocks: number;
  cpuBlocksTotal: number;
  cpuPinnedBlocks: number;
  cpuStores: number;
  cpuEvictions: number;
  cpuLoads: number;
  cpuLoadBlocks: number;
}

/**
 * Host-memory KV tier after vLLM's OffloadingConnector with its CPU backend
 * (`vllm/v1/kv_offload`): every block the GPU cache commits is also copied to
 * host memory (asynchronously, off the step's critical path), the host pool is
 * an LRU of block hashes, and a request whose GPU prefix match stops short
 * loads the following host-held blocks back before it runs, paying PCIe
 * time instead of prefill. Events are the connector's: a store is a
 * BlockStored with medium CPU and no tokens (`token_ids=[]`, `block_size=0`,
 * no parent), an eviction a BlockRemoved with medium CPU. Pins (LMCache
 * controller's `pin`) keep blocks out of the LRU until they expire.
 */
export class CpuTier {
  readonly numBlocks: number;
  readonly #o: CpuTierOptions;
  readonly #now: () => number;
  /** Block hash -> itself; recency order is the eviction order. */
  readonly #lru: LRUCache<bigint, bigint>;
  /** Pinned block hash -> expiry (performance.now() ms); pinned blocks sit outside the LRU. */
  readonly #pinned = new Map<bigint, number>();
  /** PCIe is one queue: concurrent loads serialise on it. */
  #busyUntil = 0;
  readonly stats: CpuTierStats;

  constructor(options: CpuTierOptions) {
    this.#o = options;
    this.numBlocks = Math.max(0, Math.floor(options.numBlocks));
    this.#now = options.now ?? (() => performance.now());
    this.#lru = new LRUCache<bigint, bigint>({ max: Math.max(1, this.numBlocks) });
    this.stats = {
      cpuBlocks: 0,
      cpuBlocksTotal: this.numBlocks,
      cpuPinnedBlocks: 0,
      cpuStores: 0,
      cpuEvictions: 0,
      cpuLoads: 0,
      cpuLoadBlocks: 0,
    };
  }

  get enabled(): boolean {
    return this.numBlocks > 0;
  }

  has(hash: bigint): boolean {
    return this.#pinned.has(hash) || this.#lru.has(hash);
  }

  /**
   * Takes one step's GPU events and returns them with the tier's own events
   * spliced in: each GPU BlockStored is followed by the CPU copy of its new
   * blocks (and any host evictions it caused), before a later GPU eviction in
   * the same batch could make the index forget the block the copy names.
   */
  withOffloads(events: KvEvent[]): KvEvent[] {
    if (!this.enabled) return events;
    this.#expirePins();
    let out: KvEvent[] | undefined;
    for (let i = 0; i < events.length; i++) {
      const ev = events[i]!;
      if (ev.kind === 'cleared') {
        this.#lru.clear();
        this.#pinned.clear();
      }
      if (ev.kind !== 'stored' || ev.tier !== 'gpu') {
        out?.push(ev);
        continue;
      }
      out ??= events.slice(0, i);
      out.push(ev);
      this.#store(ev.engineHashes as bigint[], out);
    }
    this.stats.cpuBlocks = this.#lru.size + this.#pinned.size;
    this.stats.cpuPinnedBlocks = this.#pinned.size;
    return out ?? events;
  }

  /** Leading blocks of `hashes` from `from` on that the host holds (consecutive). */
  lookup(hashes: readonly bigint[], from: number, max: number): number {
    let n = 0;
    for (let b = from; b < max && b < hashes.length; b++) {
      const h = hashes[b]!;
      if (!this.has(h)) break;
      this.#lru.get(h); // a hit refreshes, as the connector's manager touches looked-up keys
      n++;
    }
    return n;
  }

  /** Resolves when `blocks` blocks have crossed PCIe, queued behind transfers already under way. */
  load(blocks: number): Promise<void> {
    const ms = (blocks * loadMsPerBlock(this.#o)) / this.#o.speedup;
    const now = this.#now();
    const start = Math.max(now, this.#busyUntil);
    this.#busyUntil = start + ms;
    this.stats.cpuLoads++;
    this.stats.cpuLoadBlocks += blocks;
    const wait = this.#busyUntil - now;
    return new Promise((resolve) => (wait >= 1 ? setTimeout(resolve, wait) : setImmediate(resolve)));
  }

  /**
   * Pins the host-held blocks among `hashes` until `ttlMs` from now, as far as
   * half the host pool allows (the rest must stay evictable, or offloading
   * stalls). Returns how many blocks are pinned now. As LMCache's `pin` sets
   * a chunk's TTL, an already pinned block takes the new TTL, shorter or
   * longer: a short one is how a caller lets go (LMCache has no unpin yet).
   */
  pin(hashes: readonly bigint[], ttlMs: number): number {
    this.#expirePins();
    const until = this.#now() + ttlMs;
    let pinned = 0;
    for (const h of hashes) {
      if (this.#pinned.has(h)) {
        this.#pinned.set(h, until);
        pinned++;
        continue;
      }
      if (!this.#lru.has(h) || this.#pinned.size >= this.numBlocks / 2) break;
      this.#lru.delete(h);
      this.#pinned.set(h, until);
      pinned++;
    }
    this.stats.cpuPinnedBlocks = this.#pinned.size;
    return pinned;
  }

  #store(hashes: readonly bigint[], out: KvEvent[]): void {
    const fresh: bigint[] = [];
    const removed: bigint[] = [];
    for (const h of hashes) {
      if (this.has(h)) {
        this.#lru.get(h);
        continue;
      }
      if (this.#lru.size + this.#pinned.size >= this.numBlocks) {
        const victim = this.#lru.pop();
        if (victim === undefined) continue; // everything pinned: this block is not offloaded
        removed.push(victim);
        this.stats.cpuEvictions++;
      }
      this.#lru.set(h, h);
      fresh.push(h);
    }
    // The connector evicts before it stores (prepare_store), so the removal goes first.
    if (removed.length > 0) out.push({ kind: 'removed', engineHashes: removed, tier: 'cpu' });
    if (fresh.length === 0) return;
    this.stats.cpuStores += fresh.length;
    out.push({
      kind: 'stored',
      engineHashes: fresh,
      parentEngineHash: null,
      tokenIds: [],
      blockSize: 0,
      tier: 'cpu',
      loraName: null,
    });
  }

  /** Expired pins go back to the LRU as its most recent entries. */
  #expirePins(): void {
    if (this.#pinned.size === 0) return;
    const now = this.#now();
    for (const [h, until] of this.#pinned) {
      if (until > now) continue;
      this.#pinned.delete(h);
      this.#lru.set(h, h);
    }
  }
}
