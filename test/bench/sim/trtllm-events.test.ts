import t from 'tap';
import { TrtllmEventQueue, trtllmEventData, trtllmEventJson } from '../../../bench/sim/trtllm-events.js';
import { SimTokenizer } from '../../../bench/sim/text.js';
import { startSimWorker } from '../../../bench/sim/worker.js';
import { decodeTrtllmEvents } from '../../../indexer/events/decode-trtllm.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';

// Hand-written from TensorRT-LLM's KVCacheEventSerializer (tensorrt_llm/_utils.py): key order
// event_id, data, window_size; stored_block = type, block_hash, tokens, cache_level, priority;
// unique_token = type, token_id, token_extra_id; event_diff = type, new_value, old_value. Rendered
// as Starlette's JSONResponse does (json.dumps, separators (",", ":")). 2^64 - 1 keeps every digit.
const BIG = 18446744073709551615n;
const STORED =
  '{"event_id":1,"data":{"type":"stored","parent_hash":null,"blocks":[{"type":"stored_block","block_hash":18446744073709551615,' +
  '"tokens":[{"type":"unique_token","token_id":7,"token_extra_id":0},{"type":"unique_token","token_id":8,"token_extra_id":0}],' +
  '"cache_level":0,"priority":35}]},"window_size":4096}';
const CHILD =
  '{"event_id":2,"data":{"type":"stored","parent_hash":18446744073709551615,"blocks":[{"type":"stored_block","block_hash":42,' +
  '"tokens":[{"type":"unique_token","token_id":9,"token_extra_id":0},{"type":"unique_token","token_id":10,"token_extra_id":0}],' +
  '"cache_level":0,"priority":35}]},"window_size":4096}';
const OFFLOAD =
  '{"event_id":3,"data":{"type":"updated","block_hash":42,"cache_level":{"type":"event_diff","new_value":1,"old_value":0},' +
  '"priority":null},"window_size":4096}';
const REMOVED = '{"event_id":4,"data":{"type":"removed","block_hashes":[42,18446744073709551615]},"window_size":4096}';
const CREATED = '{"event_id":0,"data":{"type":"created","num_blocks_per_cache_level":[64,8]},"window_size":4096}';

t.test('the queue writes trtllm-serve JSON byte for byte, ids from 0, drained per call', async (t) => {
  const q = new TrtllmEventQueue({ windowSize: 4096, blocksPerCacheLevel: [64, 8] });
  q.publish([
    {
      kind: 'stored',
      engineHashes: [BIG],
      parentEngineHash: null,
      tokenIds: [7, 8],
      blockSize: 2,
      tier: 'gpu',
      loraName: null,
    },
    {
      kind: 'stored',
      engineHashes: [42n],
      parentEngineHash: BIG,
      tokenIds: [9, 10],
      blockSize: 2,
      tier: 'gpu',
      loraName: null,
    },
    { kind: 'moved', engineHashes: [42n], tier: 'cpu' },
    { kind: 'removed', engineHashes: [42n, BIG], tier: 'cpu' },
  ]);
  t.equal(q.drain(), `[${CREATED},${STORED},${CHILD},${OFFLOAD},${REMOVED}]`);
  t.equal(q.drain(), '[]', 'a poll takes everything');
  t.equal(q.nextEventId, 5);
  // Our own consumer reads it back: the offload moves the block to the cpu tier, the removal leaves every tier.
  const decoded = decodeTrtllmEvents(`[${STORED},${CHILD},${OFFLOAD},${REMOVED}]`);
  t.same(
    decoded.batches.map((b) => b.events.map((e) => e.kind)),
    [['stored'], ['stored'], ['moved'], ['removed']],
  );
  t.match(decoded.batches[2]!.events[0], { kind: 'moved', tier: 'cpu', engineHashes: [42n] });
  t.match(decoded.batches[3]!.events[0], { kind: 'removed', allTiers: true, engineHashes: [42n, BIG] });
  t.equal(decoded.batches[0]!.events[0]!.kind === 'stored' && decoded.batches[0]!.events[0]!.engineHashes[0], BIG);
});

t.test('an onboard is cache_level 1 -> 0, one updated event per block; a full queue drops its oldest', async (t) => {
  t.same(trtllmEventData({ kind: 'moved', engineHashes: [1n, 2n], tier: 'gpu' }), [
    '{"type":"updated","block_hash":1,"cache_level":{"type":"event_diff","new_value":0,"old_value":1},"priority":null}',
    '{"type":"updated","block_hash":2,"cache_level":{"type":"event_diff","new_value":0,"old_value":1},"priority":null}',
  ]);
  t.equal(
    trtllmEventJson(7, '{"type":"removed","block_hashes":[]}', 32),
    '{"event_id":7,"data":{"type":"removed","block_hashes":[]},"window_size":32}',
  );
  const q = new TrtllmEventQueue({ windowSize: 32, blocksPerCacheLevel: [4, 0], maxEvents: 2 });
  q.publish([
    { kind: 'removed', engineHashes: [1n], tier: 'gpu' },
    { kind: 'removed', engineHashes: [2n], tier: 'gpu' },
  ]);
  t.equal(q.dropped, 1);
  t.same(
    (JSON.parse(q.drain()) as { event_id: number }[]).map((e) => e.event_id),
    [1, 2],
    'ids skip where events were lost',
  );
});

t.test('a sim in TRT-LLM mode serves POST /kv_cache_events; evictions go to level 1, then out', async (t) => {
  const tokenizer = await SimTokenizer.load(QWEN3_TOKENIZER_DIR);
  const w = await startSimWorker({
    tokenizer,
    blockSize: 16,
    kvBlocks: 8,
    maxModelLen: 1024,
    timing: { speedup: 20 },
    trtllmEvents: { secondaryBlocks: 2 },
  });
  t.teardown(() => w.close());
  const poll = async () => {
    const res = await fetch(`${w.url}/kv_cache_events`, { method: 'POST' });
    t.equal(res.headers.get('content-type'), 'application/json');
    return await res.text();
  };
  const first = await poll();
  t.equal(first, '[{"event_id":0,"data":{"type":"created","num_blocks_per_cache_level":[8,2]},"window_size":1024}]');
  const complete = (prompt: number[]) =>
    fetch(`${w.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt, max_tokens: 1 }),
    }).then((r) => r.json() as Promise<{ usage: { prompt_tokens: number } }>);
  // 48 tokens: three full blocks. Then two 112-token prompts (7 blocks each) evict them and each other:
  // evicted blocks go to level 1, which holds two, so later offloads push its oldest out.
  await complete(Array.from({ length: 48 }, (_, i) => 1000 + i));
  const stored = JSON.parse(await poll()) as { event_id: number; data: { type: string; blocks?: unknown[] } }[];
  t.same(
    stored.map((e) => [e.event_id, e.data.type, e.data.blocks?.length]),
    [[1, 'stored', 3]],
  );
  await complete(Array.from({ length: 112 }, (_, i) => 5000 + i));
  await complete(Array.from({ length: 112 }, (_, i) => 9000 + i));
  const after = JSON.parse(await poll()) as { data: { type: string; cache_level?: { new_value: number } } }[];
  const kinds = after.map((e) => e.data.type + (e.data.cache_level ? `->${e.data.cache_level.new_value}` : ''));
  const s = w.stats();
  t.ok(s.kvOffloads >= 3, `offloads ${s.kvOffloads}`);
  t.equal(kinds.filter((k) => k === 'updated->1').length, s.kvOffloads, 'one updated (level 0 -> 1) per offload');
  t.ok(kinds.includes('removed'), 'the full secondary level drops its oldest block');
  t.equal(s.kvSecondaryBlocksCached, 2);
  t.ok(s.kvSecondaryEvictions >= 1);
  // The first offload of the run comes before the removal it causes, as TRT-LLM orders them.
  t.ok(kinds.indexOf('updated->1') < kinds.indexOf('removed'));
});
