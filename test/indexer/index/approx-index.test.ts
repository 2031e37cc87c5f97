import t from 'tap';
import { ApproxIndex } from '../../../indexer/index/approx-index.js';

const chain = (start: number, n: number) =>
  Array.from({ length: n }, (_, i) => (BigInt(start + i) * 0x9e3779b97f4a7c15n) % (1n << 64n));

t.test('records expire after the TTL; routing again renews', async (t) => {
  let now = 1_000;
  const ix = new ApproxIndex({ ttlMs: 120_000, now: () => now });
  const p = chain(1, 6);
  ix.record('a', p);
  ix.record('b', p.slice(0, 3));
  t.same(Object.fromEntries(ix.match(p)), { a: { blocks: 6, gpuBlocks: 6 }, b: { blocks: 3, gpuBlocks: 3 } });
  now += 60_000;
  ix.record('a', p.slice(0, 2)); // renews blocks 0-1 of a only
  now += 60_000; // first records expire (expiresAt <= now)
  t.same(Object.fromEntries(ix.match(p)), { a: { blocks: 2, gpuBlocks: 2 } });
  t.equal(ix.treeSize('a'), 2);
  t.equal(ix.stats().expired, 2);
  now += 60_000;
  t.equal(ix.match(p).size, 0);
  t.equal(ix.size, 0, 'expired blocks free their nodes');
  t.equal(ix.stats().records, 0);
});

t.test('bounded: beyond maxBlocks the oldest records go first', async (t) => {
  let now = 0;
  const ix = new ApproxIndex({ ttlMs: 1_000_000, maxBlocks: 10, now: () => now });
  ix.record('a', chain(100, 4));
  ix.record('b', chain(200, 4));
  ix.record('c', chain(300, 4)); // 12 > 10: a's record is dropped
  t.equal(ix.match(chain(100, 4)).size, 0);
  t.same(ix.match(chain(200, 4)).get('b'), { blocks: 4, gpuBlocks: 4 });
  t.same(ix.match(chain(300, 4)).get('c'), { blocks: 4, gpuBlocks: 4 });
  t.equal(ix.stats().evictedEarly, 1);
  t.equal(ix.stats().recordedBlocks, 8);
  ix.record('d', chain(400, 50)); // longer than the bound: truncated
  t.equal(ix.stats().recordedBlocks, 10);
  t.same(ix.match(chain(400, 50)).get('d'), { blocks: 10, gpuBlocks: 10 });
  ix.clearTarget('d');
  t.equal(ix.match(chain(400, 50)).size, 0);
  now = 2_000_000;
  t.equal(ix.match(chain(400, 50)).size, 0);
  t.equal(ix.size, 0);
  t.throws(() => new ApproxIndex({ ttlMs: 0 }), RangeError);
});

t.test('a cleared target recorded again is not dropped by its old records', async (t) => {
  let now = 0;
  const ix = new ApproxIndex({ ttlMs: 100, now: () => now });
  ix.record('a', chain(1, 3));
  ix.clearTarget('a');
  now = 50;
  ix.record('a', chain(1, 3));
  now = 120; // the first record expires, the second lives until 150
  t.same(ix.match(chain(1, 3)).get('a'), { blocks: 3, gpuBlocks: 3 });
  now = 150;
  t.equal(ix.match(chain(1, 3)).size, 0);
});
