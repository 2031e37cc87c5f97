import t from 'tap';
import { decodeKvBatchPayload } from '../../../indexer/events/decode-msgpack.js';
import type { KvEvent } from '../../../indexer/events/types.js';
import { createBlockHasher } from '../../../indexer/index/block-hash.js';
import { KvIndexer } from '../../../indexer/index/kv-indexer.js';
import { encodeVllmBatch } from '../../../bench/sim/kv-encode.js';
import { createDynamoStrategy } from '../../../gateway/routing/strategies/dynamo.js';

const BS = 4;
const toks = (n: number) => Array.from({ length: n }, (_, i) => 100 + i);
// vLLM's OffloadingConnector: CPU copies are BlockStored without tokens, block_size 0, no parent.
const cpuCopy = (hashes: bigint[]): KvEvent => ({
  kind: 'stored',
  engineHashes: hashes,
  parentEngineHash: null,
  tokenIds: [],
  blockSize: 0,
  tier: 'cpu',
  loraName: null,
});
const gpuStored: KvEvent = {
  kind: 'stored',
  engineHashes: [11n, 12n, 13n],
  parentEngineHash: null,
  tokenIds: toks(12),
  blockSize: BS,
  tier: 'gpu',
  loraName: null,
};

for (const format of ['current', 'legacy'] as const) {
  t.test(`${format}: a token-less CPU BlockStored decodes as a copy to the CPU tier`, async (t) => {
    const payload = encodeVllmBatch({ ts: 1, events: [gpuStored, cpuCopy([11n, 12n])], dataParallelRank: 0 }, format);
    const decoded = decodeKvBatchPayload(payload);
    t.equal(decoded.skipped, 0);
    t.same(decoded.events[1], { kind: 'moved', engineHashes: [11n, 12n], tier: 'cpu', copy: true });
  });
}

t.test(
  'GPU eviction after a CPU copy leaves the prefix in the index on CPU, credited at the host weight',
  async (t) => {
    const hasher = await createBlockHasher();
    const ix = new KvIndexer({ hasher, model: 'm', blockSize: BS });
    const sink = ix.sinkFor('w1');
    const events = [
      gpuStored,
      cpuCopy([11n, 12n, 13n]),
      { kind: 'removed', engineHashes: [11n, 12n, 13n], tier: 'gpu' },
    ];
    const payload = encodeVllmBatch({ ts: 1, events: events as KvEvent[], dataParallelRank: null }, 'current');
    const decoded = decodeKvBatchPayload(payload);
    sink.apply({ seq: 1n, ts: decoded.ts, dataParallelRank: null, events: decoded.events });
    const hashes = hasher.hashBlocks(toks(13), BS, ix.seedFor(null));
    t.same(ix.match(hashes).get('w1'), { blocks: 3, gpuBlocks: 0 }, 'held on CPU only');

    const load = { inFlight: 0, prefillTokens: 0, decodeBlocks: 0 };
    const workers = [
      { id: 'w1', url: 'http://w1', models: ['m'], load, healthy: true },
      { id: 'w2', url: 'http://w2', models: ['m'], load, healthy: true },
    ];
    const dynamo = createDynamoStrategy({}, { index: ix, blockSize: BS });
    const d = dynamo.choose(
      {
        requestId: 'r',
        model: 'm',
        path: '/v1/completions',
        headers: {},
        sessionKey: undefined,
        promptTokens: 13,
        blocks: { tokenCount: 13, blockSize: BS, hashes },
        random: () => 0,
        now: () => 0,
      },
      workers as never,
    );
    t.equal(d.worker.id, 'w1');
    t.equal(d.explain.creditBlocks, 2.25, '3 host blocks × hostTierWeight 0.75');

    // The connector's host eviction takes the last tier away.
    sink.apply({
      seq: 2n,
      ts: 2,
      dataParallelRank: null,
      events: [{ kind: 'removed', engineHashes: [11n, 12n, 13n], tier: 'cpu' }],
    });
    t.equal(ix.match(hashes).get('w1'), undefined);
  },
);
