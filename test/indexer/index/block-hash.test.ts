import t from 'tap';
import xxhash from 'xxhash-wasm';
import { createBlockHasher } from '../../../indexer/index/block-hash.js';

const tokens = (n: number, start = 1) => Array.from({ length: n }, (_, i) => start + i * 7);

t.test('known vector pins the layout: parent u64 LE, then tokens as u32 LE, xxh64 with the seed', async (t) => {
  const h = await createBlockHasher();
  const x = await xxhash();
  const seed = h.seedFor('Qwen/Qwen3-0.6B');
  const toks = [1, 2, 3, 0xffffffff];
  const [b0, b1] = h.hashBlocks([...toks, 5, 6, 7, 8], 4, seed);

  // Independent byte layout: 8 zero bytes (root parent), then 4 tokens LE.
  const first = new Uint8Array(8 + 16);
  const dv = new DataView(first.buffer);
  toks.forEach((v, i) => dv.setUint32(8 + 4 * i, v, true));
  t.equal(b0, x.h64Raw(first, seed));
  const second = new Uint8Array(8 + 16);
  const dv2 = new DataView(second.buffer);
  dv2.setBigUint64(0, b0!, true);
  [5, 6, 7, 8].forEach((v, i) => dv2.setUint32(8 + 4 * i, v, true));
  t.equal(b1, x.h64Raw(second, seed));
  // And one literal value, so a change of xxhash-wasm or of the layout is noticed.
  t.equal(
    h.hashBlocks([1, 2, 3, 4], 4, 0n)[0],
    x.h64Raw(new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]), 0n),
  );
  t.equal(h.seedFor('m', null), x.h64('kvgate/block-hash/v1\u0000m\u0000', 0n));
});

t.test('deterministic, chained, partial block ignored', async (t) => {
  const h = await createBlockHasher();
  const seed = h.seedFor('m');
  const a = h.hashBlocks(tokens(16 * 5 + 3), 16, seed);
  t.equal(a.length, 5, 'trailing partial block ignored');
  t.same(h.hashBlocks(tokens(16 * 5), 16, seed), a, 'same tokens, same hashes');
  t.equal(new Set(a).size, 5);

  // Equal prefixes give equal hashes; one changed token changes that block and every later one.
  const changed = tokens(16 * 5);
  changed[16 * 2 + 4] = 999_999;
  const b = h.hashBlocks(changed, 16, seed);
  t.same(b.slice(0, 2), a.slice(0, 2));
  for (let i = 2; i < 5; i++) t.not(b[i], a[i], `block ${i} differs`);

  // `parent` continues a chain: hashing in two parts equals hashing at once.
  const head = h.hashBlocks(tokens(16 * 5).slice(0, 32), 16, seed);
  const tail = h.hashBlocks(tokens(16 * 5).slice(32), 16, seed, head[1]);
  t.same([...head, ...tail], a);

  // Same block content under another parent is another block.
  const lone = h.hashBlocks(tokens(16 * 5).slice(32, 48), 16, seed);
  t.not(lone[0], a[2]);
  t.same(h.hashBlocks(tokens(10), 16, seed), []);
  t.same(h.hashBlocks(new Uint32Array(tokens(32)), 16, seed), a.slice(0, 2), 'typed arrays work too');
});

t.test('seeds: per model and per LoRA adapter; block size change reuses the buffer safely', async (t) => {
  const h = await createBlockHasher();
  const base = h.seedFor('m');
  t.equal(h.seedFor('m', null), base);
  t.equal(h.seedFor('m', ''), base, 'empty adapter name is the base model');
  t.not(h.seedFor('m', 'lora-a'), base);
  t.not(h.seedFor('m', 'lora-a'), h.seedFor('m', 'lora-b'));
  t.not(h.seedFor('m2'), base);
  t.not(h.hashBlocks(tokens(16), 16, base)[0], h.hashBlocks(tokens(16), 16, h.seedFor('m', 'lora-a'))[0]);

  const big = h.hashBlocks(tokens(256 * 2), 256, base);
  t.equal(big.length, 2);
  t.same(h.hashBlocks(tokens(32), 16, base), h.hashBlocks(tokens(32), 16, base));
  t.same(h.hashBlocks(tokens(256 * 2), 256, base), big);
  t.throws(() => h.hashBlocks(tokens(4), 0, base), RangeError);
});

t.test('whole-chain hashing equals one xxh64 per block, for any block size, seed, parent and length', async (t) => {
  const h = await createBlockHasher();
  const x = await xxhash();
  const reference = (tokens: number[], blockSize: number, seed: bigint, parent = 0n): bigint[] => {
    const out: bigint[] = [];
    const bytes = new Uint8Array(8 + 4 * blockSize);
    const view = new DataView(bytes.buffer);
    let prev = parent;
    for (let b = 0; b + 1 <= tokens.length / blockSize; b++) {
      view.setBigUint64(0, prev, true);
      for (let j = 0; j < blockSize; j++) view.setUint32(8 + 4 * j, tokens[b * blockSize + j]!, true);
      prev = x.h64Raw(bytes, seed);
      out.push(prev);
    }
    return out;
  };
  let state = 7;
  const next = () => (state = (Math.imul(state, 1103515245) + 12345) >>> 0);
  const randomTokens = (n: number) => Array.from({ length: n }, () => next() % 152_000);
  for (const blockSize of [1, 3, 16, 64]) {
    for (const seed of [0n, 12345n, (1n << 64n) - 1n, 1n << 63n]) {
      const tokens = randomTokens(blockSize * 9 + 2);
      t.same(
        h.hashBlocks(tokens, blockSize, seed),
        reference(tokens, blockSize, seed),
        `block ${blockSize}, seed ${seed}`,
      );
      const parent = (1n << 63n) + 99n;
      t.same(
        h.hashBlocks(tokens, blockSize, seed, parent),
        reference(tokens, blockSize, seed, parent),
        'with a parent',
      );
    }
  }
  // Long enough to grow the module's memory several times; the library's own functions keep working after it.
  const long = randomTokens(16 * 40_000);
  t.same(h.hashBlocks(long, 16, 5n), reference(long, 16, 5n), '640k tokens');
  t.same(h.hashBlocks(Uint32Array.from(long.slice(0, 160)), 16, 5n), reference(long.slice(0, 160), 16, 5n));
  t.equal(h.seedFor('m', null), x.h64('kvgate/block-hash/v1\u0000m\u0000', 0n), 'seedFor after growth');
  t.same(h.hashBlocks([1, 2, 3], 4, 0n), [], 'no full block');
});

t.test('cache_salt goes into the first block only; the chain carries it on', async (t) => {
  const h = await createBlockHasher();
  const seed = h.seedFor('m');
  const toks = tokens(16 * 3);
  const plain = h.hashBlocks(toks, 16, seed);
  const salted = h.hashBlocks(toks, 16, seed, undefined, 'tenant-a');
  t.equal(salted.length, 3);
  for (let i = 0; i < 3; i++) t.not(salted[i], plain[i], `block ${i} differs from the unsalted chain`);
  t.not(h.hashBlocks(toks, 16, seed, undefined, 'tenant-b')[0], salted[0], 'another salt, another chain');
  t.same(h.hashBlocks(toks, 16, seed, undefined, null), plain, 'null salt = none');
  t.same(h.hashBlocks(toks, 16, seed, undefined, ''), plain, 'empty salt = none');
  // An engine event for a child block names no salt: continuing from the salted parent gives the same hashes.
  t.same(h.hashBlocks(toks.slice(16), 16, seed, salted[0]), salted.slice(1));
  t.same(
    h.hashBlocks(toks.slice(16), 16, seed, salted[0], 'ignored'),
    salted.slice(1),
    'a salt under a parent is ignored',
  );
  t.same(h.hashBlocks(toks.slice(0, 8), 16, seed, undefined, 'tenant-a'), [], 'no full block, no hash');
});
