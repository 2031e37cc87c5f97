import t from 'tap';
import { createBlockHasher, type BlockHasher } from '../../../indexer/index/block-hash.js';
import type { KvEvent, KvEventBatch, KvTier } from '../../../indexer/events/types.js';
import { KvIndexer } from '../../../indexer/index/kv-indexer.js';

const BS = 4;
const MODEL = 'Qwen/Qwen3-0.6B';
let hasher: BlockHasher;
t.before(async () => {
  hasher = await createBlockHasher();
});

const toks = (n: number, start = 1) => Array.from({ length: n }, (_, i) => start + i);

function stored(
  engineHashes: (bigint | string)[],
  parent: bigint | string | null,
  tokenIds: number[],
  opts: { tier?: KvTier; lora?: string | null; blockSize?: number; salt?: string | null } = {},
): KvEvent {
  return {
    kind: 'stored',
    engineHashes,
    parentEngineHash: parent,
    tokenIds,
    blockSize: opts.blockSize ?? BS,
    tier: opts.tier ?? 'gpu',
    loraName: opts.lora ?? null,
    ...(opts.salt ? { cacheSalt: opts.salt } : {}),
  };
}
const removed = (engineHashes: (bigint | string)[], tier: KvTier = 'gpu'): KvEvent => ({
  kind: 'removed',
  engineHashes,
  tier,
});
let seq = 0n;
const batch = (events: KvEvent[], dataParallelRank: number | null = null): KvEventBatch => ({
  seq: ++seq,
  ts: 1_700_000_000.5,
  dataParallelRank,
  events,
});

function setup(extra: { maxNodes?: number } = {}) {
  const warnings: { obj: object; msg: string }[] = [];
  const ix = new KvIndexer({
    hasher,
    model: MODEL,
    blockSize: BS,
    log: { warn: (obj, msg) => warnings.push({ obj, msg }) },
    now: () => 42,
    ...extra,
  });
  const prompt = (tokens: number[], lora: string | null = null) => hasher.hashBlocks(tokens, BS, ix.seedFor(lora));
  return { ix, warnings, prompt };
}

t.test('stored events are re-hashed with our hasher and chained through the parent engine hash', async (t) => {
  const { ix, prompt } = setup();
  const w = ix.sinkFor('w1');
  // Engine hashes are arbitrary ids (here: signed int64, hex strings); only tokens matter.
  w.apply(batch([stored([-5n, 77n], null, toks(8))]));
  w.apply(batch([stored(['ab'.repeat(32)], 77n, toks(4, 9))]));
  w.apply(batch([stored([18446744073709551615n], 'ab'.repeat(32), toks(4, 13))]));
  const p = prompt(toks(20)); // 5 blocks: w1 holds the first 4
  t.same(Object.fromEntries(ix.match(p)), { w1: { blocks: 4, gpuBlocks: 4 } });
  t.same(ix.match(prompt([...toks(8), 99, 98, 97, 96])).get('w1'), { blocks: 2, gpuBlocks: 2 });
  const s = ix.stats().perWorker.w1;
  t.equal(s!.blocks, 4);
  t.equal(s!.blocksStored, 4);
  t.equal(s!.eventsApplied, 3);
  t.equal(s!.lastSeq, String(seq));
  t.equal(s!.lastBatchTs, 1_700_000_000.5);
  t.equal(s!.lastAppliedAt, 42);
  t.equal(ix.treeSize('w1'), 4);
});

t.test('removed resolves engine hashes (bigint and string), leading-only semantics', async (t) => {
  const { ix, prompt } = setup();
  const a = ix.sinkFor('a');
  const b = ix.sinkFor('b');
  const e = (i: number) => BigInt(i) * 1000003n;
  a.apply(batch([stored([e(1), e(2), e(3), e(4)], null, toks(16))]));
  b.apply(batch([stored(['h1', 'h2', 'h3'], null, toks(12))]));
  const p = prompt(toks(16));
  a.apply(batch([removed([e(2)])]));
  b.apply(batch([removed(['h3', 'unknown'])]));
  t.same(Object.fromEntries(ix.match(p)), { a: { blocks: 1, gpuBlocks: 1 }, b: { blocks: 2, gpuBlocks: 2 } });
  t.equal(ix.stats().perWorker.a!.blocksRemoved, 1);
  t.equal(ix.stats().perWorker.b!.unknownRemoved, 1);
  t.equal(ix.stats().perWorker.a!.blocks, 3, 'a still holds blocks 1, 3, 4');
  // A removed block's engine hash no longer resolves: a stored event under it is an unknown parent.
  a.apply(batch([stored([e(9)], e(2), toks(4, 17))]));
  t.equal(ix.stats().perWorker.a!.unknownParent, 1);
});

t.test('cleared and reset drop only that worker (all ranks on reset)', async (t) => {
  const { ix, prompt } = setup();
  const p = prompt(toks(8));
  for (const id of ['a', 'b']) ix.sinkFor(id).apply(batch([stored([1n, 2n], null, toks(8))]));
  ix.sinkFor('a').apply(batch([stored([1n, 2n], null, toks(8))], 1));
  t.same([...ix.match(p).keys()].sort(), ['a', 'a#1', 'b']);
  ix.sinkFor('a').apply(batch([{ kind: 'cleared' }], 1));
  t.same([...ix.match(p).keys()].sort(), ['a', 'b'], 'AllBlocksCleared clears one rank');
  ix.sinkFor('a').apply(batch([{ kind: 'cleared' }, stored([5n, 6n], null, toks(8))], 1));
  t.same([...ix.match(p).keys()].sort(), ['a', 'a#1', 'b'], 'events after a clear in the same batch apply');
  ix.sinkFor('a').reset('sequence went backwards');
  t.same([...ix.match(p).keys()], ['b']);
  t.equal(ix.stats().perWorker.a!.resets, 1);
  t.equal(ix.stats().perWorker.a!.blocks, 0);
  t.equal(ix.stats().nodes, 2, 'b still holds its nodes');
  ix.sinkFor('a').apply(batch([stored([1n, 2n], null, toks(8))]));
  t.same([...ix.match(p).keys()].sort(), ['a', 'b'], 'rebuilt from new events');
  ix.clearWorker('b');
  ix.clearWorker('nobody');
  t.same([...ix.match(p).keys()], ['a']);
});

t.test('data-parallel ranks are separate targets with their own engine-hash maps', async (t) => {
  const { ix, prompt } = setup();
  const s = ix.sinkFor('w');
  s.apply(batch([stored([1n, 2n, 3n], null, toks(12))], 0));
  s.apply(batch([stored([1n], null, toks(4))], 1)); // same engine hash, other rank
  s.apply(batch([removed([2n])], 1)); // unknown on rank 1: must not touch rank 0
  const m = ix.match(prompt(toks(12)));
  t.same(Object.fromEntries(m), { 'w#0': { blocks: 3, gpuBlocks: 3 }, 'w#1': { blocks: 1, gpuBlocks: 1 } });
  t.equal(ix.stats().perWorker.w!.blocks, 4);
  t.same(ix.stats().perTarget, { 'w#0': 3, 'w#1': 1 });
});

t.test('unknown parent: skipped and counted, no orphan that could match', async (t) => {
  const { ix, prompt } = setup();
  const s = ix.sinkFor('w');
  s.apply(batch([stored([10n], 999n, toks(4, 5))]));
  t.equal(ix.stats().perWorker.w!.unknownParent, 1);
  t.equal(ix.stats().nodes, 0);
  // A prompt whose second block has those tokens does not match through the orphan.
  t.equal(ix.match(prompt(toks(8))).size, 0);
});

t.test('block size mismatch: counted, skipped, warned once per worker', async (t) => {
  const { ix, warnings, prompt } = setup();
  const s = ix.sinkFor('w');
  s.apply(batch([stored([1n], null, toks(16), { blockSize: 16 })]));
  s.apply(batch([stored([2n], null, toks(16), { blockSize: 16 })]));
  ix.sinkFor('v').apply(batch([stored([1n], null, toks(16), { blockSize: 16 })]));
  t.equal(ix.stats().perWorker.w!.blockSizeMismatch, 2);
  t.equal(ix.stats().blockSizeMismatches, 3);
  t.equal(warnings.length, 2, 'once per worker');
  t.match(warnings[0]!.obj, { worker: 'w', configuredBlockSize: BS, eventBlockSize: 16 });
  t.match(warnings[0]!.msg, /block size/);
  t.equal(ix.match(prompt(toks(16))).size, 0);
});

t.test('LoRA blocks never match base-model blocks', async (t) => {
  const { ix, prompt } = setup();
  ix.sinkFor('lora').apply(batch([stored([1n, 2n], null, toks(8), { lora: 'sql-adapter' })]));
  ix.sinkFor('base').apply(batch([stored([1n, 2n], null, toks(8))]));
  t.same([...ix.match(prompt(toks(8))).keys()], ['base']);
  t.same([...ix.match(prompt(toks(8), 'sql-adapter')).keys()], ['lora']);
  t.equal(ix.match(prompt(toks(8), 'other')).size, 0);
});

t.test('salted blocks match only requests with the same cache_salt', async (t) => {
  const { ix } = setup();
  const s = ix.sinkFor('salted');
  // The root run names the salt (vLLM: the first block's extra keys); the child run does not.
  s.apply(batch([stored([1n, 2n], null, toks(8), { salt: 'alice' })]));
  s.apply(batch([stored([3n], 2n, toks(4, 9))]));
  ix.sinkFor('plain').apply(batch([stored([7n], null, toks(4))]));
  const seed = ix.seedFor(null);
  const salted = (salt: string | null) => hasher.hashBlocks(toks(12), BS, seed, undefined, salt);
  t.equal(ix.match(salted('alice')).get('salted')?.blocks, 3, 'same salt: all three blocks, the child too');
  t.notOk(ix.match(salted('alice')).has('plain'), 'a salted request never matches unsalted blocks');
  t.notOk(ix.match(salted('bob')).has('salted'), 'another salt: nothing');
  t.notOk(ix.match(salted(null)).has('salted'), 'no salt: nothing');
  t.equal(ix.match(salted(null)).get('plain')?.blocks, 1);
});

t.test('tiers: CPU copies count as blocks, not gpuBlocks; tier-specific removal', async (t) => {
  const { ix, prompt } = setup();
  const s = ix.sinkFor('w');
  s.apply(batch([stored([1n, 2n], null, toks(8))]));
  s.apply(batch([stored([3n], 2n, toks(4, 9), { tier: 'cpu' })]));
  s.apply(batch([stored([1n], null, toks(4), { tier: 'cpu' })])); // offloaded copy of block 0
  const p = prompt(toks(12));
  t.same(ix.match(p).get('w'), { blocks: 3, gpuBlocks: 2 });
  s.apply(batch([removed([1n], 'gpu')]));
  t.same(ix.match(p).get('w'), { blocks: 3, gpuBlocks: 1 }, 'block 0 still on CPU');
  s.apply(batch([removed([1n], 'cpu')]));
  t.equal(ix.match(p).size, 0);
});

t.test('node cap: refused blocks are counted and later events under them are unknown parents', async (t) => {
  const { ix } = setup({ maxNodes: 3 });
  const s = ix.sinkFor('w');
  s.apply(batch([stored([1n, 2n, 3n, 4n, 5n], null, toks(20))]));
  const st = ix.stats();
  t.equal(st.nodes, 3);
  t.equal(st.rejectedInserts, 1);
  t.equal(st.perWorker.w!.rejectedBlocks, 2);
  s.apply(batch([stored([6n], 5n, toks(4, 21))]));
  t.equal(ix.stats().perWorker.w!.unknownParent, 1);
  s.apply(batch([removed([3n])]));
  s.apply(batch([stored([7n], 2n, toks(4, 50))]));
  t.equal(ix.stats().nodes, 3, 'room again after a removal');
});

t.test('an engine hash re-stored with other content moves to the new block; malformed counted', async (t) => {
  const { ix, prompt } = setup();
  const s = ix.sinkFor('w');
  s.apply(batch([stored([1n], null, toks(4))]));
  s.apply(batch([stored([1n], null, toks(4, 100))]));
  t.equal(ix.match(prompt(toks(4))).size, 0);
  t.same(ix.match(prompt(toks(4, 100))).get('w'), { blocks: 1, gpuBlocks: 1 });
  t.equal(ix.stats().nodes, 1);
  s.apply(batch([stored([2n, 3n], null, toks(6, 200))]));
  t.equal(ix.stats().perWorker.w!.malformed, 1);
  t.equal(ix.stats().perWorker.w!.blocks, 2, 'only full blocks indexed');
  t.throws(() => new KvIndexer({ hasher, model: MODEL, blockSize: 0 }), RangeError);
});

t.test('TensorRT-LLM cache levels: a removal without a tier leaves every tier; `moved` changes the tier', async (t) => {
  const { ix, prompt } = setup();
  const w = ix.sinkFor('trt');
  const p = prompt(toks(8));
  w.apply(batch([stored([1n], null, toks(4), { tier: 'cpu' }), stored([2n], 1n, toks(4, 5))]));
  t.same(ix.match(p).get('trt'), { blocks: 2, gpuBlocks: 1 }, 'the first block is offloaded');
  w.apply(batch([{ kind: 'moved', engineHashes: [1n], tier: 'gpu' }]));
  t.same(ix.match(p).get('trt'), { blocks: 2, gpuBlocks: 2 }, 'moved back to GPU');
  w.apply(batch([{ kind: 'moved', engineHashes: [2n], tier: 'cpu' }]));
  t.same(ix.match(p).get('trt'), { blocks: 2, gpuBlocks: 1 });
  w.apply(batch([{ kind: 'removed', engineHashes: [2n], tier: 'gpu', allTiers: true }]));
  t.same(ix.match(p).get('trt'), { blocks: 1, gpuBlocks: 1 }, 'a block held at cache level 1 is removed');
  w.apply(batch([{ kind: 'moved', engineHashes: [99n], tier: 'cpu' }]));
  t.equal(ix.stats().perWorker.trt!.unknownRemoved, 1, 'an unknown block counts, nothing breaks');
  t.equal(ix.blocksOf('trt'), 1);
});
