import t from 'tap';
import type { KvEventBatch } from '../../../indexer/events/types.js';
import { ApproxIndex } from '../../../indexer/index/approx-index.js';
import { createBlockHasher, type BlockHasher } from '../../../indexer/index/block-hash.js';
import type { KvIndex } from '../../../indexer/index/kv-index.js';
import { KvIndexer } from '../../../indexer/index/kv-indexer.js';

/** Both indexes through one contract, as the strategies are: what routing relies on must hold for either. */

const BS = 4;
const MODEL = 'Qwen/Qwen3-0.6B';
let hasher: BlockHasher;
t.before(async () => {
  hasher = await createBlockHasher();
});

interface Harness {
  index: KvIndex<never>;
  /** Makes `worker` (rank) hold the blocks of `tokens`, in the index's own input. */
  store(worker: string, tokens: number[], rank?: number | null): void;
  hashes(tokens: number[]): bigint[];
}

const HARNESSES: Record<string, () => Harness> = {
  'kv-indexer (events)': () => {
    const ix = new KvIndexer({ hasher, model: MODEL, blockSize: BS });
    const seed = ix.seedFor(null);
    let seq = 0n;
    return {
      index: ix,
      hashes: (tokens) => hasher.hashBlocks(tokens, BS, seed),
      store(worker, tokens, rank = null) {
        // Engine hashes: anything unique per prefix; here our own hash with a tag, so they differ from ours.
        const engineHashes = hasher.hashBlocks(tokens, BS, seed).map((h) => h ^ 0x5an);
        const batch: KvEventBatch = {
          seq: seq++,
          ts: 0,
          dataParallelRank: rank,
          events: [
            {
              kind: 'stored',
              engineHashes,
              parentEngineHash: null,
              tokenIds: tokens,
              blockSize: BS,
              tier: 'gpu',
              loraName: null,
            },
          ],
        };
        ix.apply(worker, batch);
      },
    };
  },
  'approx-index (routing)': () => {
    const ix = new ApproxIndex({ ttlMs: 60_000, now: () => 0 });
    const seed = hasher.seedFor(MODEL, null);
    return {
      index: ix,
      hashes: (tokens) => hasher.hashBlocks(tokens, BS, seed),
      store(worker, tokens, rank = null) {
        ix.apply(worker, { hashes: hasher.hashBlocks(tokens, BS, seed), dataParallelRank: rank });
      },
    };
  },
};

const toks = (n: number, start = 1) => Array.from({ length: n }, (_, i) => start + i);

for (const [name, make] of Object.entries(HARNESSES)) {
  t.test(name, async (t) => {
    t.test('an empty index matches nothing', async (t) => {
      const h = make();
      t.equal(h.index.match(h.hashes(toks(16))).size, 0);
      t.equal(h.index.blocksOf('w1'), 0);
    });

    t.test('match counts leading blocks; a divergent block ends it', async (t) => {
      const h = make();
      h.store('w1', toks(16));
      t.equal(h.index.blocksOf('w1'), 4);
      t.same(h.index.match(h.hashes(toks(16))).get('w1'), { blocks: 4, gpuBlocks: 4 });
      t.same(h.index.match(h.hashes(toks(8))).get('w1'), { blocks: 2, gpuBlocks: 2 });
      const divergent = [...toks(8), 999, ...toks(7, 10)];
      t.same(h.index.match(h.hashes(divergent)).get('w1'), { blocks: 2, gpuBlocks: 2 });
      t.equal(h.index.match(h.hashes(toks(16, 100))).size, 0, 'another prompt');
      t.equal(h.index.match(h.hashes(toks(3))).size, 0, 'no full block, nothing to match');
    });

    t.test('workers are independent; clearWorker forgets one', async (t) => {
      const h = make();
      h.store('w1', toks(16));
      h.store('w2', toks(8));
      const m = h.index.match(h.hashes(toks(16)));
      t.same(m.get('w1'), { blocks: 4, gpuBlocks: 4 });
      t.same(m.get('w2'), { blocks: 2, gpuBlocks: 2 });
      h.index.clearWorker('w1');
      t.equal(h.index.blocksOf('w1'), 0);
      t.same([...h.index.match(h.hashes(toks(16))).keys()], ['w2']);
      h.index.clearWorker('nobody');
      t.equal(h.index.blocksOf('w2'), 2);
    });

    t.test('data-parallel ranks are separate targets; clearWorker takes every rank', async (t) => {
      const h = make();
      h.store('w1', toks(16), 0);
      h.store('w1', toks(8), 1);
      h.store('w10', toks(8), 0);
      const m = h.index.match(h.hashes(toks(16)));
      t.same(m.get('w1#0'), { blocks: 4, gpuBlocks: 4 });
      t.same(m.get('w1#1'), { blocks: 2, gpuBlocks: 2 });
      t.equal(h.index.blocksOf('w1#1'), 2);
      h.index.clearWorker('w1');
      t.same([...h.index.match(h.hashes(toks(16))).keys()], ['w10#0'], 'a worker whose id extends it is untouched');
    });

    t.test('storing more of the same prefix extends the match', async (t) => {
      const h = make();
      h.store('w1', toks(8));
      h.store('w1', toks(24));
      t.same(h.index.match(h.hashes(toks(24))).get('w1'), { blocks: 6, gpuBlocks: 6 });
      t.equal(h.index.blocksOf('w1'), 6);
    });
  });
}
