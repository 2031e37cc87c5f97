import t from 'tap';
import { parseTargetKey, RadixIndex, SHARED_PREFIX_CHILDREN, targetKey } from '../../../indexer/index/radix-index.js';

// Distinct fake "our hashes"; chaining does not matter to the index itself.
const chain = (start: number, n: number) =>
  Array.from({ length: n }, (_, i) => (BigInt(start + i) * 0x9e3779b97f4a7c15n) % (1n << 64n));

t.test('target keys', async (t) => {
  t.equal(targetKey('w1', null), 'w1');
  t.equal(targetKey('w1', 3), 'w1#3');
  t.same(parseTargetKey('w1#3'), { workerId: 'w1', dpRank: 3 });
  t.same(parseTargetKey('w1'), { workerId: 'w1', dpRank: null });
  t.same(parseTargetKey('a#b'), { workerId: 'a#b', dpRank: null });
  t.same(parseTargetKey('w#0'), { workerId: 'w', dpRank: 0 });
});

t.test('insert under a parent, match leading blocks across targets', async (t) => {
  const ix = new RadixIndex();
  const h = chain(1, 10);
  t.equal(ix.insert('a', undefined, h.slice(0, 10), 'gpu'), 10);
  t.equal(ix.insert('b', undefined, h.slice(0, 4), 'gpu'), 4);
  t.equal(ix.insert('c', undefined, h.slice(0, 2), 'gpu'), 2);
  t.equal(ix.insert('c', h[1], h.slice(2, 6), 'gpu'), 4, 'continues under its parent');
  t.equal(ix.size, 10);
  const m = ix.match(h);
  t.same(Object.fromEntries(m), {
    a: { blocks: 10, gpuBlocks: 10 },
    b: { blocks: 4, gpuBlocks: 4 },
    c: { blocks: 6, gpuBlocks: 6 },
  });
  t.same(Object.fromEntries(ix.match(h.slice(0, 3))), {
    a: { blocks: 3, gpuBlocks: 3 },
    b: { blocks: 3, gpuBlocks: 3 },
    c: { blocks: 3, gpuBlocks: 3 },
  });
  t.same(ix.match([h[1]!, h[2]!]).size, 0, 'a prompt must start at a root block');
  t.same(ix.match([]).size, 0);
  t.same(ix.match(chain(100, 3)).size, 0);
  // A prompt diverging after block 5 matches 5 blocks at most.
  t.same(ix.match([...h.slice(0, 5), ...chain(500, 5)]).get('a'), { blocks: 5, gpuBlocks: 5 });
  t.equal(ix.insert('z', 12345n, chain(900, 2), 'gpu'), 0, 'unknown parent: nothing inserted');
  t.equal(ix.stats().unknownParents, 1);
});

t.test('leading-only: holding block 3 but not block 2 counts 2', async (t) => {
  const ix = new RadixIndex();
  const h = chain(1, 5);
  ix.insert('a', undefined, h, 'gpu');
  ix.insert('b', undefined, h, 'gpu');
  t.equal(ix.remove('a', [h[2]!]), 1);
  t.same(Object.fromEntries(ix.match(h)), { a: { blocks: 2, gpuBlocks: 2 }, b: { blocks: 5, gpuBlocks: 5 } });
  ix.remove('b', [h[0]!]);
  t.same(Object.fromEntries(ix.match(h)), { a: { blocks: 2, gpuBlocks: 2 } });
  t.equal(ix.blocksOf('a'), 4);
  t.equal(ix.blocksOf('b'), 4);
});

t.test('tiers: gpuBlocks counts the GPU blocks among the leading ones', async (t) => {
  const ix = new RadixIndex();
  const h = chain(1, 6);
  ix.insert('a', undefined, h.slice(0, 3), 'gpu');
  ix.insert('a', h[2], h.slice(3), 'cpu');
  ix.insert('a', undefined, h.slice(0, 1), 'cpu'); // block 0 on both tiers
  t.same(ix.match(h).get('a'), { blocks: 6, gpuBlocks: 3 });
  t.equal(ix.remove('a', [h[0]!], 'gpu'), 0, 'still held on CPU');
  t.same(ix.match(h).get('a'), { blocks: 6, gpuBlocks: 2 });
  t.equal(ix.remove('a', [h[0]!], 'cpu'), 1);
  t.equal(ix.match(h).size, 0);
});

t.test('remove frees empty leaves up the chain, clearTarget drops only that target', async (t) => {
  const ix = new RadixIndex();
  const h = chain(1, 8);
  ix.insert('a', undefined, h, 'gpu');
  ix.insert('b', undefined, h.slice(0, 3), 'gpu');
  ix.remove('a', h.slice(0, 4)); // blocks 0-3 stay as nodes: b holds 0-2, block 3 has children
  t.equal(ix.size, 8);
  ix.remove('a', h.slice(4));
  t.equal(ix.size, 3, 'the now empty tail is freed, including block 3');
  ix.insert('a', undefined, h, 'gpu');
  ix.clearTarget('a');
  t.equal(ix.size, 3);
  t.same(Object.fromEntries(ix.match(h)), { b: { blocks: 3, gpuBlocks: 3 } });
  ix.clearTarget('b');
  t.equal(ix.size, 0);
  t.same(ix.stats().targets, 0);
  ix.insert('c', undefined, h, 'gpu');
  t.same(ix.match(h).get('c'), { blocks: 8, gpuBlocks: 8 }, 'released ids are reused cleanly');
});

t.test('many targets sharing a prefix; removal while shared', async (t) => {
  const ix = new RadixIndex();
  const base = chain(1, 4);
  for (let w = 0; w < 40; w++) {
    ix.insert(`w${w}`, undefined, base, 'gpu');
    ix.insert(`w${w}`, base[3], chain(1000 * (w + 1), w % 5), w % 2 ? 'gpu' : 'cpu');
  }
  const m = ix.match([...base, ...chain(1000 * 8, 4)]);
  t.equal(m.size, 40);
  // 32 different continuations under base[3]: the base is a shared prefix.
  t.same(m.get('w7'), { blocks: 6, gpuBlocks: 6, sharedBlocks: 4 });
  t.same(m.get('w8'), { blocks: 4, gpuBlocks: 4, sharedBlocks: 4 });
  t.same(m.get('w3'), { blocks: 4, gpuBlocks: 4, sharedBlocks: 4 });
  for (let w = 0; w < 40; w += 2) ix.remove(`w${w}`, [base[1]!]);
  const m2 = ix.match(base);
  t.equal(m2.size, 40);
  t.same(m2.get('w0'), { blocks: 1, gpuBlocks: 1 });
  t.same(m2.get('w1'), { blocks: 4, gpuBlocks: 4, sharedBlocks: 4 });
});

t.test('maxNodes cap: new nodes refused and counted, existing nodes still gain holders', async (t) => {
  const ix = new RadixIndex({ maxNodes: 5 });
  const h = chain(1, 8);
  t.equal(ix.insert('a', undefined, h, 'gpu'), 5);
  t.equal(ix.size, 5);
  t.equal(ix.stats().rejectedInserts, 1, 'the chain stops at the first refused block');
  t.equal(ix.insert('b', undefined, h.slice(0, 5), 'gpu'), 5);
  t.same(ix.match(h).get('b'), { blocks: 5, gpuBlocks: 5 });
  ix.remove('a', h.slice(0, 5));
  ix.remove('b', h.slice(2, 5));
  t.equal(ix.size, 2);
  t.equal(ix.insert('c', undefined, h.slice(0, 5), 'gpu'), 5, 'room again after removals');
  t.throws(() => new RadixIndex({ maxNodes: 0 }), RangeError);
});

t.test('grows past its initial capacity and stays consistent under churn', async (t) => {
  const ix = new RadixIndex();
  const chains: bigint[][] = [];
  for (let c = 0; c < 300; c++) {
    const h = chain(c * 100 + 1, 20);
    chains.push(h);
    ix.insert(`w${c % 7}`, undefined, h, 'gpu');
  }
  t.equal(ix.size, 6000);
  for (let c = 0; c < 300; c += 2) ix.remove(`w${c % 7}`, chains[c]!.slice(10));
  t.equal(ix.size, 6000 - 150 * 10);
  const wrong = chains.filter((h, c) => ix.match(h).get(`w${c % 7}`)?.blocks !== (c % 2 ? 20 : 10));
  t.equal(wrong.length, 0, 'every chain matches its remaining length');
  for (let w = 0; w < 7; w++) ix.clearTarget(`w${w}`);
  t.equal(ix.size, 0);
});

t.test(
  'sharedBlocks: the prefix up to the deepest block with SHARED_PREFIX_CHILDREN or more cached continuations',
  async (t) => {
    const K = SHARED_PREFIX_CHILDREN;
    t.ok(K >= 3, 'a conversation turn boundary (output + next prompt) and a retry are never a shared prefix');
    const ix = new RadixIndex();
    const system = chain(1, 5);
    ix.insert('a', undefined, system, 'gpu');
    // K − 1 continuations under the system prompt's last block: not yet shared.
    for (let q = 0; q < K - 1; q++) ix.insert('a', system[4], chain(1000 + q * 10, 3), 'gpu');
    const prompt = [...system, ...chain(1000, 3)];
    t.same(ix.match(prompt).get('a'), { blocks: 8, gpuBlocks: 8 }, `${K - 1} continuations: nothing shared`);
    ix.insert('b', undefined, system, 'gpu');
    ix.insert('b', system[4], chain(90_000, 3), 'gpu');
    t.same(
      ix.match(prompt).get('a'),
      { blocks: 8, gpuBlocks: 8, sharedBlocks: 5 },
      `a ${K}th (any target's) makes the first five blocks shared`,
    );
    t.same(
      ix.match(system.slice(0, 3)).get('a'),
      { blocks: 3, gpuBlocks: 3 },
      'a match that ends above the branch point shares nothing',
    );
    // Deeper branch point: K continuations under the first question's second block.
    for (let k = 0; k < K; k++) ix.insert('a', chain(1000, 2)[1], chain(50_000 + k * 10, 2), 'cpu');
    const deeper = [...system, ...chain(1000, 2), ...chain(50_000, 2)];
    t.same(ix.match(deeper).get('a'), { blocks: 9, gpuBlocks: 7, sharedBlocks: 7 });
    t.same(
      ix.match(deeper).get('b'),
      { blocks: 5, gpuBlocks: 5, sharedBlocks: 5 },
      'a target that stops earlier counts only the branch points it reached',
    );
    // Continuations removed: the prefix is no longer shared.
    ix.clearTarget('b');
    ix.remove('a', chain(1010, 3));
    t.same(
      ix.match([...system, ...chain(1020, 3)]).get('a'),
      { blocks: 8, gpuBlocks: 8 },
      `down to ${K - 2} continuations`,
    );
  },
);
