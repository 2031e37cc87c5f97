import t from 'tap';
import type { BlocksRemoved, BlocksStored, KvEvent } from '../../../indexer/events/types.js';
import { createBlockHasher } from '../../../bench/sim/block-hash.js';
import { KvCache, type CacheSeq } from '../../../bench/sim/kv-cache.js';

const BS = 4;

function seq(tokens: number[]): CacheSeq {
  return { tokens: [...tokens], blockIds: [], blockHashes: [], committedBlocks: 0 };
}

const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

async function cache(numBlocks: number) {
  return new KvCache({ blockSize: BS, numBlocks, hasher: await createBlockHasher(42n) });
}

/** Admits a sequence the way the scheduler does: prefix lookup, allocate all, compute all. */
function run(c: KvCache, s: CacheSeq): { ok: boolean; cached: number } {
  const prefix = c.findPrefix(s);
  if (!c.allocate(s, s.tokens.length, prefix)) return { ok: false, cached: 0 };
  c.commit(s, s.tokens.length);
  return { ok: true, cached: prefix.length * BS };
}

const stored = (events: KvEvent[]) => events.filter((e): e is BlocksStored => e.kind === 'stored');
const removed = (events: KvEvent[]) => events.filter((e): e is BlocksRemoved => e.kind === 'removed');

t.test('hashes are 64-bit, chained, and fixed by the seed', async (t) => {
  const h1 = await createBlockHasher(7n);
  const h2 = await createBlockHasher(7n);
  const h3 = await createBlockHasher(8n);
  const toks = range(100, 8);
  const a = h1(null, toks, 0, 4);
  t.equal(a, h2(null, toks, 0, 4));
  t.not(a, h3(null, toks, 0, 4), 'another root seed, other hashes (two vLLM processes disagree)');
  t.ok(a >= 0n && a < 1n << 64n);
  t.not(h1(a, toks, 4, 8), h1(null, toks, 4, 8), 'the parent is part of the hash');
});

t.test('a repeated prompt hits whole blocks; the last token is always recomputed', async (t) => {
  const c = await cache(16);
  const first = seq(range(1, 12)); // exactly 3 blocks
  t.same(run(c, first), { ok: true, cached: 0 });
  const ev = stored(c.drainEvents());
  t.equal(ev.length, 1);
  t.equal(ev[0]!.engineHashes.length, 3);
  t.equal(ev[0]!.parentEngineHash, null);
  t.same(ev[0]!.tokenIds, range(1, 12));
  t.equal(ev[0]!.blockSize, BS);
  c.free(first);
  t.equal(c.stats().usedBlocks, 0);
  t.equal(c.stats().cachedBlocks, 3, 'freed blocks stay cached');

  const again = seq(range(1, 12));
  t.same(run(c, again), { ok: true, cached: 8 }, 'only 2 of 3 blocks: the final token needs computing');
  t.same(c.drainEvents(), [], 'the recomputed last block is a duplicate: no new stored event');
  c.free(again);

  const longer = seq(range(1, 13));
  t.same(run(c, longer), { ok: true, cached: 12 }, 'one more token: all 3 blocks hit');
});

t.test('a partial prefix hits up to the first differing block; stored events chain on the parent', async (t) => {
  const c = await cache(16);
  const a = seq(range(1, 12));
  run(c, a);
  const [first] = stored(c.drainEvents());
  const b = seq([...range(1, 8), 99, 98, 97, 96, 95]);
  t.same(run(c, b), { ok: true, cached: 8 });
  const [ev] = stored(c.drainEvents());
  t.equal(ev!.engineHashes.length, 1, 'only the new full block is stored');
  t.equal(ev!.parentEngineHash, first!.engineHashes[1], 'parent = hash of the last shared block');
  t.same(ev!.tokenIds, [99, 98, 97, 96]);
  t.equal(b.blockIds.length, 4, 'a partial tail block is held but never stored');
  t.equal(a.blockIds[0], b.blockIds[0], 'shared prefix blocks are the same physical blocks');
});

t.test('LRU eviction takes only free blocks, least recently freed first, and emits removed', async (t) => {
  const c = await cache(6);
  const a = seq(range(1, 8)); // 2 blocks
  const b = seq(range(101, 8));
  const held = seq(range(201, 8));
  run(c, a);
  run(c, b);
  run(c, held);
  const hashes = stored(c.drainEvents()).map((e) => e.engineHashes);
  c.free(a);
  c.free(b); // b freed after a: a is the least recent
  t.equal(c.freeBlocks, 4);
  const d = seq(range(301, 8));
  t.ok(run(c, d).ok);
  const rm = removed(c.drainEvents());
  t.equal(rm.length, 1, 'evictions of one step coalesce into one event');
  t.same(new Set(rm[0]!.engineHashes), new Set(hashes[0]), "a's blocks were evicted, b's kept");
  t.equal(c.findPrefix(seq(range(101, 9))).length, 2, 'b still hits');
  t.equal(c.findPrefix(seq(range(1, 9))).length, 0, 'a is gone');
  t.equal(c.findPrefix(seq(range(201, 9))).length, 2, 'the held sequence was never a candidate');
  t.equal(c.stats().usedBlocks, 4);
});

t.test('referenced blocks are never evicted and capacity is never exceeded', async (t) => {
  const c = await cache(4);
  const a = seq(range(1, 8));
  const b = seq(range(1, 12)); // shares a's 2 blocks
  run(c, a);
  t.ok(run(c, b).ok);
  t.equal(c.stats().usedBlocks, 3, 'shared blocks counted once');
  const big = seq(range(500, 8));
  t.notOk(c.allocate(big, 8), 'only 1 block is free: 2 needed');
  t.same(big.blockIds, [], 'a failed allocation takes nothing');
  c.free(a);
  t.notOk(c.allocate(big, 8), "a's blocks are still referenced by b");
  c.free(b);
  t.ok(c.allocate(big, 8));
  t.equal(c.stats().usedBlocks, 2);
  t.ok(c.stats().usedBlocks <= c.numBlocks);
});

t.test('a cached prefix sitting in the free pool counts against capacity when revived', async (t) => {
  const c = await cache(3);
  const a = seq(range(1, 8));
  run(c, a);
  c.free(a);
  const other = seq(range(50, 4));
  run(c, other); // 1 block used, 2 free (both cached, a's)
  const again = seq(range(1, 12));
  const prefix = c.findPrefix(again);
  t.equal(prefix.length, 2);
  t.notOk(c.allocate(again, 12, prefix), 'reviving 2 + 1 new > 2 free');
  c.free(other);
  t.ok(c.allocate(again, 12, prefix));
  t.equal(c.stats().usedBlocks, 3);
});

t.test('reset forgets every prefix and emits cleared', async (t) => {
  const c = await cache(8);
  const a = seq(range(1, 8));
  run(c, a);
  c.drainEvents();
  c.reset();
  t.same(c.drainEvents(), [{ kind: 'cleared' }]);
  t.equal(c.findPrefix(seq(range(1, 9))).length, 0);
  c.free(a);
  t.equal(c.freeBlocks, 8);
  t.same(c.drainEvents(), [], 'anonymous blocks leave without removed events');
});
