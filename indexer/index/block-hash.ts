import xxhash from 'xxhash-wasm';
import { createChainHasher } from './xxh64-chain.js';

/**
 * Our own content hash of KV blocks, independent of any engine's hashing
 * (engine hashes are opaque, often randomly seeded per process).
 *
 * Layout of block i (xxh64, seed = `seedFor(model, lora)`):
 *
 *     xxh64( parent_u64_le(8 bytes) || token_0_u32_le || ... || token_{B-1}_u32_le , seed )
 *
 * where `parent` is the hash of block i-1, and for the first block of a
 * prompt the 8 parent bytes are all zero. Chaining makes a block's hash
 * identify its whole prefix, so the index can key a node by its hash alone;
 * the seed keeps models and LoRA adapters apart (their blocks never match).
 *
 * A `cache_salt` is mixed into the first block only (its seed becomes
 * xxh64("salt\0" + salt, seed)), as vLLM puts the salt in block 0's extra keys:
 * the chain carries it to every later block, so an event for a child block,
 * which never names the salt, still hashes to the salted chain.
 */
export interface BlockHasher {
  /** Seed for a model and optional LoRA adapter: blocks of different adapters never match. */
  seedFor(model: string, loraName?: string | null): bigint;
  /** Chained hashes of the FULL blocks of `tokens` (a trailing partial block is ignored). `parent` continues a chain. */
  hashBlocks(
    tokens: ArrayLike<number>,
    blockSize: number,
    seed: bigint,
    parent?: bigint,
    salt?: string | null,
  ): bigint[];
}

const SEED_DOMAIN = 'kvgate/block-hash/v1';

// The tokens are written through a Uint32Array view, which uses host byte
// order; the layout above is little-endian.
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export async function createBlockHasher(): Promise<BlockHasher> {
  if (!LITTLE_ENDIAN) throw new Error('kvgate block hashing requires a little-endian host');
  const x = await xxhash();
  // Whole chains per call, inside WebAssembly (xxh64-chain.ts): the same hashes, without a BigInt round trip per block.
  const chain = await createChainHasher();

  return {
    seedFor(model: string, loraName?: string | null): bigint {
      // NUL cannot occur in a model or adapter name, so the pairs are unambiguous;
      // an empty adapter name means the base model.
      return x.h64(`${SEED_DOMAIN}\u0000${model}\u0000${loraName ?? ''}`, 0n);
    },

    hashBlocks(
      tokens: ArrayLike<number>,
      blockSize: number,
      seed: bigint,
      parent?: bigint,
      salt?: string | null,
    ): bigint[] {
      if (!Number.isInteger(blockSize) || blockSize <= 0) {
        throw new RangeError(`blockSize must be a positive integer, got ${blockSize}`);
      }
      const blocks = Math.floor(tokens.length / blockSize);
      // A salt belongs to the root block; a chain continued from a parent already carries it.
      if (!salt || parent !== undefined || blocks === 0) return chain(tokens, blockSize, blocks, seed, parent ?? 0n);
      const first = chain(tokens, blockSize, 1, x.h64(`salt\u0000${salt}`, seed), 0n);
      const rest = Array.from(tokens).slice(blockSize);
      return first.concat(chain(rest, blockSize, blocks - 1, seed, first[0]!));
    },
  };
}
