import xxhash from 'xxhash-wasm';

/**
 * Hash of one full block, chained on its parent's hash. Engine hashes are
 * opaque to the gateway (it re-hashes token ids), so this only has to behave
 * like vLLM's: 64-bit, unsigned, a function of (parent, tokens), and seeded per
 * process so two workers never agree by accident, as vLLM without PYTHONHASHSEED.
 */
export type BlockHasher = (
  parent: bigint | null,
  tokens: readonly number[],
  start: number,
  end: number,
  /** The LoRA adapter's name: like vLLM's block-hash extra keys, it changes every block's hash, not just the first. */
  lora?: string | null,
  /** Other extra keys: vLLM's `cache_salt` (first block only) and the hashes of media the block covers. */
  salt?: string | null,
) => bigint;

/**
 * XXH64 over the block's token ids as u32 little-endian, seeded with the parent
 * hash (the root seed for the first block). `rootSeed` fixes the hashes (tests);
 * by default it is random, as vLLM's NONE_HASH is.
 */
export async function createBlockHasher(rootSeed?: bigint): Promise<BlockHasher> {
  const x = await xxhash();
  const root = rootSeed ?? randomU64();
  const loraKeys = new Map<string, bigint>();
  const loraKey = (name: string): bigint => {
    let key = loraKeys.get(name);
    if (key === undefined) loraKeys.set(name, (key = x.h64(`lora\u0000${name}`, root)));
    return key;
  };
  const saltKey = (salt: string): bigint => x.h64(`salt\u0000${salt}`, root);
  let words = new Uint32Array(16);
  return (parent, tokens, start, end, lora, salt) => {
    const n = end - start;
    if (words.length < n) words = new Uint32Array(n);
    for (let i = 0; i < n; i++) words[i] = tokens[start + i]!;
    const seed = parent ?? root;
    // Uint32Array is little-endian on every platform Node supports.
    let key = lora ? seed ^ loraKey(lora) : seed;
    if (salt) key ^= saltKey(salt);
    return x.h64Raw(new Uint8Array(words.buffer, 0, n * 4), key);
  };
}

function randomU64(): bigint {
  const words = crypto.getRandomValues(new Uint32Array(2));
  return (BigInt(words[0]!) << 32n) | BigInt(words[1]!);
}
