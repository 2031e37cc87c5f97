import xxhash from 'xxhash-wasm';

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
 */
export interface BlockHasher {
  /** Seed for a model and optional LoRA adapter: blocks of different adapters never match. */
  seedFor(model: string, loraName?: string | null): bigint;
  /** Chained hashes of the FULL blocks of `tokens` (a trailing partial block is ignored). `parent` continues a chain. */
  hashBlocks(tokens: ArrayLike<number>, blockSize: number, seed: bigint, parent?: bigint): bigint[];
}

const SEED_DOMAIN = 'kvgate/block-hash/v1';

// The scratch buffer is filled through Uint32Array/BigUint64Array views, which
// use host byte order; the layout above is little-endian.
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export async function createBlockHasher(): Promise<BlockHasher> {
  if (!LITTLE_ENDIAN) throw new Error('kvgate block hashing requires a little-endian host');
  const x = await xxhash();
  // One scratch buffer reused for every block; grown only for a larger block size.
  let bytes = new Uint8Array(8 + 4 * 64);
  let words = new Uint32Array(bytes.buffer);
  let parentView = new BigUint64Array(bytes.buffer, 0, 1);
  let input = bytes.subarray(0, 8 + 4 * 16);
  let inputBlockSize = 16;

  function prepare(blockSize: number): void {
    if (blockSize === inputBlockSize) return;
    if (8 + 4 * blockSize > bytes.length) {
      bytes = new Uint8Array(8 + 4 * blockSize);
      words = new Uint32Array(bytes.buffer);
      parentView = new BigUint64Array(bytes.buffer, 0, 1);
    }
    input = bytes.subarray(0, 8 + 4 * blockSize);
    inputBlockSize = blockSize;
  }

  return {
    seedFor(model: string, loraName?: string | null): bigint {
      // NUL cannot occur in a model or adapter name, so the pairs are unambiguous;
      // an empty adapter name means the base model.
      return x.h64(`${SEED_DOMAIN}\u0000${model}\u0000${loraName ?? ''}`, 0n);
    },

    hashBlocks(tokens: ArrayLike<number>, blockSize: number, seed: bigint, parent?: bigint): bigint[] {
      if (!Number.isInteger(blockSize) || blockSize <= 0) {
        throw new RangeError(`blockSize must be a positive integer, got ${blockSize}`);
      }
      prepare(blockSize);
      const full = Math.floor(tokens.length / blockSize);
      const out = new Array<bigint>(full);
      let prev = parent ?? 0n;
      let t = 0;
      for (let b = 0; b < full; b++) {
        parentView[0] = prev;
        // Token ids become u32 (a negative id would wrap; engines never send one).
        for (let j = 2; j < blockSize + 2; j++) words[j] = tokens[t++]!;
        prev = x.h64Raw(input, seed);
        out[b] = prev;
      }
      return out;
    },
  };
}
