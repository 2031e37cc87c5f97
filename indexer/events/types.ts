/**
 * Engine-neutral KV cache events: what every engine adapter (vLLM, SGLang,
 * TensorRT-LLM) decodes its wire format into, and all the index ever sees.
 *
 * Engine block hashes are opaque ids (vLLM: sha256 of pickled tuples with a
 * per-process seed; SGLang: signed int64 of a sha256 chain; TRT-LLM: its own
 * 64-bit mix). The index re-hashes `tokenIds` with its own chained hash and
 * keeps the engine hash only to resolve later `removed` events. They are kept
 * as `bigint` (ints, signed or unsigned) or lowercase hex `string` (32-byte
 * binary hashes), never `number`, so nothing loses precision.
 */
export type EngineBlockHash = bigint | string;

/** Where a block lives; a CPU (offloaded) hit is worth less than a GPU one. */
export type KvTier = 'gpu' | 'cpu';

export interface BlocksStored {
  readonly kind: 'stored';
  /** One engine hash per stored block, in chain order. */
  readonly engineHashes: readonly EngineBlockHash[];
  /** Engine hash of the block before the first stored one; null at the root. */
  readonly parentEngineHash: EngineBlockHash | null;
  /** All tokens of the stored blocks, `engineHashes.length * blockSize` of them. */
  readonly tokenIds: readonly number[];
  readonly blockSize: number;
  readonly tier: KvTier;
  /** LoRA adapter the blocks belong to; null for the base model. */
  readonly loraName: string | null;
  /**
   * The request's `cache_salt`, from the first block's extra keys; only a root
   * run (parentEngineHash null) can carry it, later blocks inherit it through the chain.
   */
  readonly cacheSalt?: string | null;
}

export interface BlocksRemoved {
  readonly kind: 'removed';
  readonly engineHashes: readonly EngineBlockHash[];
  readonly tier: KvTier;
  /** The engine does not say which tier (TRT-LLM's JSON): the blocks leave every tier they are held in. */
  readonly allTiers?: boolean;
}

/** Blocks moved to another tier (TRT-LLM `updated` with a `cache_level` change); tokens are unchanged. */
export interface BlocksMoved {
  readonly kind: 'moved';
  readonly engineHashes: readonly EngineBlockHash[];
  readonly tier: KvTier;
  /**
   * Copied, not moved: the blocks stay on their other tiers too. vLLM's
   * OffloadingConnector announces a CPU copy as a BlockStored with no tokens
   * (`token_ids=[]`, `block_size=0`, no parent), naming blocks it stored on GPU before.
   */
  readonly copy?: boolean;
}

export interface AllBlocksCleared {
  readonly kind: 'cleared';
}

export type KvEvent = BlocksStored | BlocksRemoved | BlocksMoved | AllBlocksCleared;

/** One published batch: one scheduler step of one data-parallel rank. */
export interface KvEventBatch {
  /** Publisher sequence number (ZMQ frame 2; TRT-LLM event id). */
  readonly seq: bigint;
  /** Engine timestamp, seconds since the epoch. */
  readonly ts: number;
  /** Data-parallel rank that published it; null when the engine did not say. */
  readonly dataParallelRank: number | null;
  readonly events: readonly KvEvent[];
}
