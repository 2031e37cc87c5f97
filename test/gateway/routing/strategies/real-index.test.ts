import t from 'tap';
import { createBlockHasher } from '../../../../indexer/index/block-hash.js';
import { KvIndexer } from '../../../../indexer/index/kv-indexer.js';
import type { KvEventBatch } from '../../../../indexer/events/types.js';
import { createStrategy } from '../../../../gateway/routing/strategies/registry.js';
import { BLOCK, ctx, deps, worker } from '../../../fixtures/strategy-fleet.js';

/** The KV strategies against the real events-fed index (not a fake matcher). */

const tokens = (n: number, from = 1000) => Array.from({ length: n }, (_, i) => from + i);

function stored(seq: bigint, toks: number[], first: bigint, tier: 'gpu' | 'cpu', rank: number | null): KvEventBatch {
  const n = toks.length / BLOCK;
  return {
    seq,
    ts: 0,
    dataParallelRank: rank,
    events: [
      {
        kind: 'stored',
        engineHashes: Array.from({ length: n }, (_, i) => first + BigInt(i)),
        parentEngineHash: null,
        tokenIds: toks,
        blockSize: BLOCK,
        tier,
        loraName: null,
      },
    ],
  };
}

t.test('kv, dynamo, llmd-precise and sglang (events) route to the worker whose events show the prefix', async (t) => {
  const hasher = await createBlockHasher();
  const index = new KvIndexer({ hasher, model: 'm', blockSize: BLOCK });
  const system = tokens(64);
  index.sinkFor('w2').apply(stored(1n, system, 100n, 'gpu', null)); // 4 blocks on GPU
  index.sinkFor('w3').apply(stored(1n, system.slice(0, 48), 200n, 'gpu', 1)); // 3 blocks on rank 1
  const prompt = [...system, ...tokens(40, 5000)]; // 104 tokens, 6 full blocks
  const hashes = hasher.hashBlocks(prompt, BLOCK, index.seedFor());
  const c = ctx({ promptTokens: prompt.length, hashes });
  const workers = [worker('w1'), worker('w2'), worker('w3')];

  const kv = createStrategy('kv', {}, deps({ index })).choose(c, workers);
  t.equal(kv.worker.id, 'w2');
  t.equal(kv.predictedCachedBlocks, 4);
  t.same(
    kv.candidates!.map((x) => x.terms['overlapBlocks']),
    [0, 4, 3],
  );

  const dyn = createStrategy('dynamo', {}, deps({ index })).choose(c, workers);
  t.equal(dyn.worker.id, 'w2');

  const llmd = createStrategy('llmd-precise', {}, deps({ index })).choose(c, workers);
  t.equal(llmd.worker.id, 'w2');

  const sg = createStrategy('sglang-cache-aware', { source: 'events' }, deps({ index })).choose(c, workers);
  t.equal(sg.worker.id, 'w2');

  // Only rank 1 of w3 holds a prefix: it is the target reported when w3 wins.
  const busyW2 = [worker('w1', { decodeBlocks: 50 }), worker('w2', { decodeBlocks: 50 }), worker('w3')];
  const rank = createStrategy('kv', { prefillWeight: 1, reuseCredit: 0 }, deps({ index })).choose(c, busyW2);
  t.equal(rank.worker.id, 'w3');
  t.equal(rank.dataParallelRank, 1);

  // Offloaded copies are worth 0.75 each: w1's 4 CPU blocks count 3, less than w2's 4 GPU blocks.
  index.sinkFor('w1').apply(stored(1n, system, 300n, 'cpu', null));
  const tiers = createStrategy('kv', {}, deps({ index })).choose(c, workers);
  t.same(
    tiers.candidates!.map((x) => x.terms['overlapBlocks']),
    [3, 4, 3],
  );
  t.equal(tiers.worker.id, 'w2');
});

t.test('dynamo breaks exact ties by the smaller tree of the real index', async (t) => {
  const hasher = await createBlockHasher();
  const index = new KvIndexer({ hasher, model: 'm', blockSize: BLOCK });
  // Both hold unrelated blocks; w1 holds more of them.
  index.sinkFor('w1').apply(stored(1n, tokens(160, 9000), 1n, 'gpu', null));
  index.sinkFor('w2').apply(stored(1n, tokens(32, 7000), 50n, 'gpu', null));
  const prompt = tokens(64, 1);
  const c = ctx({ promptTokens: 64, hashes: hasher.hashBlocks(prompt, BLOCK, index.seedFor()) });
  for (let i = 0; i < 20; i++) {
    t.equal(
      createStrategy('dynamo', {}, deps({ index: index })).choose(c, [worker('w1'), worker('w2')]).worker.id,
      'w2',
    );
  }
});
