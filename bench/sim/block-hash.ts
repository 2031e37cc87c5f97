import xxhash from 'xxhash-wasm';

/**
 * Hash of one full block, chained on its parent's hash. Engine hashes are
 * opaque to the gateway (it re-hashes token ids), so this only has to behave
 * like vLLM's: 64-bit, unsigned, a function of (parent, tokens), and seeded per
 * process so two workers never agree by accident, as vLLM without PYTHONHASHSEED.
 */
export type BlockHasher = (parent: bigint | null, tokens: readonly number[], start: number, end: number) => bigint;

/**
 * XXH64 over the block's token ids as u32 little-endian, seeded with the parent
 * hash (the root seed for the first block). `rootSeed` fixes the hashes (tests);
 * by default it is random, as vLLM's NONE_HASH is.
 */
export async function createBlockHasher(rootSeed?: bigint): Promise<BlockHasher> {
  // eslint-disable-next-line @typescript-eslint/unbound-method -- xxhash-wasm's functions are closures, not methods
  const { h64Raw } = await xxhash();
  const root = rootSeed ?? randomU64();
  let words = new Uint32Array(16);
  return (parent, tokens, start, end) => {
    const n = end - start;
    if (words.length < n) words = new Uint32Array(n);
    for (let i = 0; i < n; i++) words[i] = tokens[start + i]!;
    // Uint32Array is little-endian on every platform Node supports.
    return h64Raw(new Uint8Array(words.buffer, 0, n * 4), parent ?? root);
  };
}

function randomU64(): bigint {
  const words = crypto.getRandomValues(new Uint32Array(2));
  return (BigInt(words[0]!) << 32n) | BigInt(words[1]!);
}
