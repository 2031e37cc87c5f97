import t from 'tap';
import { KvDecodeError } from '../../../indexer/events/decode-msgpack.js';
import { decodeTrtllmEvents, parseJsonLossless } from '../../../indexer/events/decode-trtllm.js';

// Shapes from TRT-LLM's KVCacheEventSerializer (docs/engine-wire-formats.md, pull API).
const tok = (ids: number[]) => ids.map((id) => ({ type: 'unique_token', token_id: id, token_extra_id: 0 }));
const now = () => 1_700_000_000_000;

t.test('lossless JSON parsing', async (t) => {
  t.strictSame(
    parseJsonLossless(
      '{"a": 18446744073709551615, "b": -9223372036854775808, "c": 12, "d": 1.5e3, "e": "x\\"\\u00e9", "f": [true, false, null]}',
    ),
    Object.assign(Object.create(null), {
      a: 18446744073709551615n,
      b: -9223372036854775808n,
      c: 12,
      d: 1500,
      e: 'x"é',
      f: [true, false, null],
    }),
  );
  t.strictSame(parseJsonLossless(' [ ] '), []);
  t.equal(parseJsonLossless('-9007199254740993'), -9007199254740993n);
  t.equal(parseJsonLossless('9007199254740991'), 9007199254740991, 'safe ints stay numbers');
  for (const bad of ['', '[1,]', '{"a" 1}', '[1] x', '"abc', '01', '{a:1}', '['.repeat(100) + ']'.repeat(100)]) {
    t.throws(() => parseJsonLossless(bad), KvDecodeError, JSON.stringify(bad.slice(0, 20)));
  }
});

t.test('stored, removed, created, updated', async (t) => {
  const text = `[
    {"event_id": 0, "window_size": 128, "data": {"type": "created", "num_blocks_per_cache_level": [4096, 0]}},
    {"event_id": 1, "window_size": 128, "attention_dp_rank": 1, "layer_group_id": 0, "hash_algo": "v1_block_key",
     "data": {"type": "stored", "parent_hash": null, "blocks": [
       {"type": "stored_block", "block_hash": 18446744073709551615, "tokens": ${JSON.stringify(tok([1, 2, 3, 4]))}, "cache_level": 0, "priority": 0, "mm_keys": []},
       {"type": "stored_block", "block_hash": -9223372036854775807, "tokens": ${JSON.stringify(tok([5, 6, 7, 8]))}, "cache_level": 0},
       {"type": "stored_block", "block_hash": 3, "tokens": ${JSON.stringify(tok([9, 10]))}, "cache_level": 0}]}},
    {"event_id": 2, "data": {"type": "removed", "block_hashes": [18446744073709551615, 9007199254740993]}},
    {"event_id": 3, "data": {"type": "updated", "block_hash": 101, "cache_level": {"type": "event_diff", "new_value": 1, "old_value": 0}}},
    {"event_id": 4, "data": {"type": "stored", "parent_hash": 77, "blocks": [
       {"block_hash": 5, "tokens": ${JSON.stringify(tok([1, 2]))}, "cache_level": 1}]}},
    {"event_id": 5, "data": {"type": "mystery"}}
  ]`;
  const d = decodeTrtllmEvents(text, { now });
  t.equal(d.skipped, 1, 'unknown type counted');
  t.equal(d.maxWindowSize, 128);
  t.strictSame(
    d.batches.map((b) => b.seq),
    [0n, 1n, 2n, 3n, 4n, 5n],
    'one batch per event id',
  );
  t.strictSame(
    d.batches[1],
    {
      seq: 1n,
      ts: 1_700_000_000,
      dataParallelRank: 1,
      events: [
        {
          kind: 'stored',
          engineHashes: [18446744073709551615n, -9223372036854775807n],
          parentEngineHash: null,
          tokenIds: [1, 2, 3, 4, 5, 6, 7, 8],
          blockSize: 4,
          tier: 'gpu',
          loraName: null,
        },
      ],
    },
    'stored flattens tokens and stops at the partial block',
  );
  t.strictSame(
    d.batches[2]!.events,
    [{ kind: 'removed', engineHashes: [18446744073709551615n, 9007199254740993n], tier: 'gpu', allTiers: true }],
    '2^53+1 exact; a removal leaves every tier',
  );
  t.strictSame(d.batches[0]!.events, [], 'created ignored');
  t.strictSame(
    d.batches[3]!.events,
    [{ kind: 'moved', engineHashes: [101n], tier: 'cpu' }],
    'updated cache level applied',
  );
  t.strictSame(
    d.batches[4]!.events,
    [
      {
        kind: 'stored',
        engineHashes: [5n],
        parentEngineHash: 77n,
        tokenIds: [1, 2],
        blockSize: 2,
        tier: 'cpu',
        loraName: null,
      },
    ],
    'secondary level is cpu',
  );
  t.equal(
    decodeTrtllmEvents(text, { now, blockSize: 4 }).batches[4]!.events.length,
    0,
    'a known block size rejects the partial block',
  );
});

t.test('sliding-window events are skipped', async (t) => {
  const text = `[{"event_id": 7, "window_size": 32, "data": {"type": "removed", "block_hashes": [1]}},
                 {"event_id": 8, "window_size": 4096, "data": {"type": "removed", "block_hashes": [2]}}]`;
  const d = decodeTrtllmEvents(text, { now });
  t.equal(d.skipped, 1);
  t.strictSame(
    d.batches.map((b) => b.events.length),
    [0, 1],
  );
  t.equal(
    decodeTrtllmEvents('[{"event_id": 9, "window_size": 32, "data": {"type": "removed", "block_hashes": [1]}}]', {
      now,
      maxWindowSize: 4096,
    }).skipped,
    1,
  );
});

t.test('a response that is not an event array throws KvDecodeError', async (t) => {
  t.throws(() => decodeTrtllmEvents('{"detail": "x"}'), KvDecodeError);
});

t.test('a bad event costs only itself; it keeps its id when it has one', async (t) => {
  const good = '{"event_id": 3, "data": {"type": "removed", "block_hashes": [7]}}';
  for (const [bad, keepsId] of [
    ['{"event_id": 2}', true],
    ['{"event_id": 2, "data": {"type": "removed", "block_hashes": [1.5]}}', true],
    ['{"event_id": 2, "data": {"type": "stored", "blocks": [{"block_hash": 1, "tokens": [{"token_id": -1}]}]}}', true],
    ['{"event_id": "2", "data": {"type": "removed", "block_hashes": []}}', false],
  ] as const) {
    const d = decodeTrtllmEvents(`[${bad}, ${good}]`);
    t.strictSame(
      d.batches.map((b) => [b.seq, b.events.length]),
      keepsId
        ? [
            [2n, 0],
            [3n, 1],
          ]
        : [[3n, 1]],
      bad,
    );
    t.strictSame(d.skippedByReason, { malformed: 1 });
  }
});

t.test(
  'updated: a cache_level change moves the block; priority alone does nothing; removals leave every tier',
  async (t) => {
    const d = decodeTrtllmEvents(
      `[{"event_id": 1, "data": {"type": "updated", "block_hash": 7, "cache_level": {"old_value": 0, "new_value": 1}, "priority": null}},
      {"event_id": 2, "data": {"type": "updated", "block_hash": 7, "cache_level": null, "priority": {"old_value": 35, "new_value": 90}}},
      {"event_id": 3, "data": {"type": "updated", "block_hash": 7, "cache_level": {"old_value": 1, "new_value": 0}}},
      {"event_id": 4, "data": {"type": "removed", "block_hashes": [7]}}]`,
    );
    t.strictSame(
      d.batches.map((b) => b.events),
      [
        [{ kind: 'moved', engineHashes: [7n], tier: 'cpu' }],
        [],
        [{ kind: 'moved', engineHashes: [7n], tier: 'gpu' }],
        [{ kind: 'removed', engineHashes: [7n], tier: 'gpu', allTiers: true }],
      ],
    );
    t.equal(d.skipped, 0);
  },
);
