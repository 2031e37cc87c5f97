import { LRUCache } from 'lru-cache';
import type { KvEvent } from '../../indexer/events/types.js';
import type { BlockHasher } from './block-hash.js';
import type { SimStoredEvent } from './kv-encode.js';
import { mediaKeysOf, type MediaSpan } from './media.js';

/** What the cache needs to know about a sequence holding blocks. */
export interface CacheSeq {
  /** Every token of the sequence so far: prompt, then generated tokens. */
  readonly tokens: number[];
  /** Physical blocks held, in token order. */
  blockIds: number[];
  /** Chained hashes of the full blocks of `tokens`, filled on demand. */
  blockHashes: bigint[];
  /** Leading blocks already registered in (or taken from) the prefix cache. */
  committedBlocks: number;
  /** The LoRA adapter the sequence runs with: its blocks only ever match the same adapter's. */
  readonly lora?: { readonly name: string; readonly id: number } | null;
  /** vLLM's `cache_salt`: an extra key of the first block only; the chain carries it on. */
  readonly cacheSalt?: string | null;
  readonly mediaSpans?: readonly MediaSpan[];
}

export interface KvCacheOptions {
  blockSize: number;
  numBlocks: number;
  hasher: BlockHasher;
  /**
   * TensorRT-LLM's secondary (host) cache level, in blocks; 0 = none. A cached
   * block the GPU pool evicts moves there (a `moved` event to `cpu`) instead of
   * being dropped, and the level's own least recently offloaded block leaves it
   * (`removed`) when it is full, as TRT-LLM's offload to secondary memory does.
   */
  secondaryBlocks?: number | undefined;
  /** How a prefix-cache reset is announced: `cleared` (vLLM) or `removed` listing every cached block (TRT-LLM has no clear-all event). */
  resetAs?: 'cleared' | 'removed' | undefined;
}

export interface KvCacheStats {
  totalBlocks: number;
  /** Blocks referenced by at least one sequence. */
  usedBlocks: number;
  /** Blocks findable by hash (in use or free). */
  cachedBlocks: number;
  /** Free blocks that still hold a cached prefix (evictable, LRU). */
  freeCachedBlocks: number;
  evictions: number;
  /** Blocks held in the secondary cache level, offloads into it and blocks it dropped. */
  secondaryCachedBlocks: number;
  offloads: number;
  secondaryEvictions: number;
}

/**
 * A paged KV block pool with prefix caching, after vLLM v1's KVCacheManager:
 * only full blocks are cached, by a hash chained over their token ids; blocks
 * in use are reference counted and never evicted; freed blocks keep their
 * contents and go to an LRU list, evicted (with a `removed` event) only when a
 * fresh block is needed. Blocks that never filled carry nothing worth keeping
 * and are reused before any cached block.
 */
export class KvCache {
  readonly blockSize: number;
  readonly numBlocks: number;
  readonly #hasher: BlockHasher;
  readonly #refs: Int32Array;
  readonly #hashOf: (bigint | undefined)[];
  readonly #byHash = new Map<bigint, number>();
  /** Free blocks holding no cached prefix; a stack, order is irrelevant. */
  readonly #freeEmpty: number[] = [];
  /**
   * Free cached blocks, least recently freed first (value = the block id, so
   * `pop()` names its victim). Not a Map used as a queue: V8 leaves deleted
   * entries in place until a rehash, so taking the first key of a Map that is
   * drained from the front rescans every tombstone, and eviction turned quadratic.
   */
  readonly #lru: LRUCache<number, number>;
  #events: KvEvent[] = [];
  #evictions = 0;
  /** Hashes in the secondary level, least recently offloaded first (popped when full). */
  readonly #secondary: LRUCache<bigint, bigint> | undefined;
  readonly #resetAs: 'cleared' | 'removed';
  #offloads = 0;
  #secondaryEvictions = 0;

  constructor(options: KvCacheOptions) {
    if (!(options.blockSize >= 1) || !(options.numBlocks >= 1))
      throw new RangeError('blockSize and numBlocks must be >= 1');
    this.blockSize = options.blockSize;
    this.numBlocks = options.numBlocks;
    this.#hasher = options.hasher;
    this.#refs = new Int32Array(options.numBlocks);
    this.#hashOf = new Array<bigint | undefined>(options.numBlocks).fill(undefined);
    this.#lru = new LRUCache<number, number>({ max: options.numBlocks });
    for (let b = options.numBlocks - 1; b >= 0; b--) this.#freeEmpty.push(b);
    const secondary = options.secondaryBlocks ?? 0;
    if (secondary > 0) this.#secondary = new LRUCache<bigint, bigint>({ max: secondary });
    this.#resetAs = options.resetAs ?? 'cleared';
  }

  get secondaryBlocks(): number {
    return this.#secondary?.max ?? 0;
  }

  get freeBlocks(): number {
    return this.#freeEmpty.length + this.#lru.size;
  }

  get usage(): number {
    return (this.numBlocks - this.freeBlocks) / this.numBlocks;
  }

  stats(): KvCacheStats {
    return {
      totalBlocks: this.numBlocks,
      usedBlocks: this.numBlocks - this.freeBlocks,
      cachedBlocks: this.#byHash.size,
      freeCachedBlocks: this.#lru.size,
      evictions: this.#evictions,
      secondaryCachedBlocks: this.#secondary?.size ?? 0,
      offloads: this.#offloads,
      secondaryEvictions: this.#secondaryEvictions,
    };
  }

  /** Extends `seq.blockHashes` to cover the first `count` full blocks. */
  hashBlocks(seq: CacheSeq, count: number): void {
    const bs = this.blockSize;
    for (let b = seq.blockHashes.length; b < count; b++) {
      const parent = b === 0 ? null : seq.blockHashes[b - 1]!;
      // vLLM's extra keys: the salt on the first block, the content hash of any media the block covers.
      const keys = mediaKeysOf(seq.mediaSpans ?? [], b * bs, (b + 1) * bs);
      if (b === 0 && seq.cacheSalt) keys.unshift(seq.cacheSalt);
      const extra = keys.length === 0 ? null : keys.join('\u0000');
      seq.blockHashes.push(this.#hasher(parent, seq.tokens, b * bs, (b + 1) * bs, seq.lora?.name, extra));
    }
  }

  /**
   * Cached blocks for the longest prefix of `seq`. As in vLLM, the last token
   * is always recomputed (the engine needs its logits), so a fully cached
   * prompt still leaves its final block to compute.
   */
  findPrefix(seq: CacheSeq): number[] {
    const maxBlocks = Math.floor((seq.tokens.length - 1) / this.blockSize);
    const found: number[] = [];
    for (let b = 0; b < maxBlocks; b++) {
      this.hashBlocks(seq, b + 1);
      const block = this.#byHash.get(seq.blockHashes[b]!);
      if (block === undefined) break;
      found.push(block);
    }
    return found;
  }

  /**
   * Makes `seq` hold enough blocks for its first `numTokens` tokens, taking
   * `prefix` (from findPrefix, on admission) first. All or nothing: returns
   * false and changes nothing when the free pool cannot cover it.
   */
  allocate(seq: CacheSeq, numTokens: number, prefix: readonly number[] = []): boolean {
    const needed = Math.ceil(numTokens / this.blockSize) - seq.blockIds.length - prefix.length;
    let revived = 0; // prefix blocks sitting in the free pool stop being free once touched
    for (const b of prefix) if (this.#refs[b] === 0) revived++;
    if (Math.max(needed, 0) + revived > this.freeBlocks) return false;
    for (const b of prefix) {
      if (this.#refs[b]!++ === 0) this.#lru.delete(b);
      seq.blockIds.push(b);
    }
    if (prefix.length > 0) seq.committedBlocks = seq.blockIds.length;
    for (let i = 0; i < needed; i++) seq.blockIds.push(this.#takeFree());
    return true;
  }

  /**
   * Registers the blocks that `numComputed` tokens have filled: they become
   * findable by hash and are announced in one `stored` event per run. A block
   * whose hash is already cached elsewhere (two requests computed the same
   * prefix at once) stays anonymous, so one hash never names two blocks.
   */
  commit(seq: CacheSeq, numComputed: number): void {
    const full = Math.min(Math.floor(numComputed / this.blockSize), seq.blockIds.length);
    if (full <= seq.committedBlocks) return;
    this.hashBlocks(seq, full);
    let runStart = -1;
    const flush = (end: number) => {
      if (runStart < 0) return;
      const stored: SimStoredEvent = {
        kind: 'stored',
        engineHashes: seq.blockHashes.slice(runStart, end),
        parentEngineHash: runStart === 0 ? null : seq.blockHashes[runStart - 1]!,
        tokenIds: seq.tokens.slice(runStart * this.blockSize, end * this.blockSize),
        blockSize: this.blockSize,
        tier: 'gpu',
        loraName: seq.lora?.name ?? null,
        loraId: seq.lora?.id ?? null,
        ...(runStart === 0 && seq.cacheSalt ? { cacheSalt: seq.cacheSalt } : {}),
      };
      this.#events.push(stored);
      runStart = -1;
    };
    for (let b = seq.committedBlocks; b < full; b++) {
      const hash = seq.blockHashes[b]!;
      const block = seq.blockIds[b]!;
      if (this.#byHash.has(hash) || this.#hashOf[block] !== undefined) {
        flush(b);
        continue;
      }
      this.#hashOf[block] = hash;
      this.#byHash.set(hash, block);
      if (this.#secondary?.delete(hash)) {
        // The block was in the secondary level: TRT-LLM onboards it (cache_level 1 -> 0) rather than storing it anew.
        flush(b);
        this.#push('moved', hash, 'gpu');
        continue;
      }
      if (runStart < 0) runStart = b;
    }
    flush(full);
    seq.committedBlocks = full;
  }

  /**
   * Releases the sequence's blocks. Freed in reverse so a sequence's tail is
   * evicted before its head, which other requests are likelier to share.
   */
  free(seq: CacheSeq): void {
    for (let i = seq.blockIds.length - 1; i >= 0; i--) {
      const b = seq.blockIds[i]!;
      if (--this.#refs[b]! > 0) continue;
      if (this.#hashOf[b] !== undefined) this.#lru.set(b, b);
      else this.#freeEmpty.push(b);
    }
    seq.blockIds = [];
    seq.committedBlocks = 0;
  }

  /** Forgets every cached prefix (vLLM's reset_prefix_cache); blocks in use stay allocated, now anonymous. */
  reset(): void {
    if (this.#resetAs === 'removed') {
      const all = [...this.#byHash.keys(), ...(this.#secondary?.keys() ?? [])];
      if (all.length > 0) this.#events.push({ kind: 'removed', engineHashes: all, tier: 'gpu' });
    } else this.#events.push({ kind: 'cleared' });
    this.#byHash.clear();
    this.#hashOf.fill(undefined);
    this.#secondary?.clear();
    for (const b of this.#lru.keys()) this.#freeEmpty.push(b);
    this.#lru.clear();
  }

  /** Events since the last drain, in the order they happened: one scheduler step's batch. */
  drainEvents(): KvEvent[] {
    const events = this.#events;
    this.#events = [];
    return events;
  }

  #takeFree(): number {
    const empty = this.#freeEmpty.pop();
    if (empty !== undefined) {
      this.#refs[empty] = 1;
      return empty;
    }
    const victim = this.#lru.pop();
    if (victim === undefined) throw new Error('KV cache: no free block (allocate checks capacity first)');
    const hash = this.#hashOf[victim]!;
    this.#hashOf[victim] = undefined;
    this.#byHash.delete(hash);
    this.#evictions++;
    this.#refs[victim] = 1;
    const secondary = this.#secondary;
    if (!secondary) {
      this.#push('removed', hash, 'gpu');
      return victim;
    }
    // TRT-LLM's order: the offload is announced first, then the secondary block it displaced.
    this.#offloads++;
    this.#push('moved', hash, 'cpu');
    if (secondary.size >= secondary.max) {
      const dropped = secondary.pop()!;
      this.#secondaryEvictions++;
      this.#push('removed', dropped, 'cpu');
    }
    secondary.set(hash, hash);
    return victim;
  }

  /** Consecutive events of one kind and tier coalesce into one, as vLLM's BlockRemoved lists its evictions. */
  #push(kind: 'removed' | 'moved', hash: bigint, tier: 'gpu' | 'cpu'): void {
    const last = this.#events[this.#events.length - 1];
    if (last?.kind === kind && last.tier === tier) (last.engineHashes as bigint[]).push(hash);
    else this.#events.push({ kind, engineHashes: [hash], tier });
  }
}
