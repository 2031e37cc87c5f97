import { Packr } from 'msgpackr';
import t from 'tap';
import { decodeKvBatchPayload, KvDecodeError } from '../../../indexer/events/decode-msgpack.js';
import {
  NOTES_CURRENT_CLEARED,
  NOTES_CURRENT_REMOVED,
  NOTES_CURRENT_STORED,
  NOTES_EMPTY_BATCH,
  NOTES_HASH,
  NOTES_LEGACY_STORED,
  NOTES_TOKENS,
  NOTES_TS,
  SGLANG_HASH_VALUE,
  SGLANG_STORED_6,
  SGLANG_STORED_7,
  SGLANG_STORED_8_META,
  VLLM_V09_BATCH,
} from '../../fixtures/wire/kv-payloads.js';

const dec = (data: string | Buffer) => decodeKvBatchPayload(typeof data === 'string' ? Buffer.from(data, 'hex') : data);
// Shapes the fixtures do not cover are built with msgpackr (the decoder does not care about int widths).
const packr = new Packr({ useRecords: false, useFloat32: 0 });
const pack = (v: unknown) => packr.pack(v);
const storedMap = (extra: Record<string, unknown> = {}) => ({
  type: 'BlockStored',
  block_hashes: [7n],
  parent_block_hash: null,
  token_ids: [1, 2, 3, 4],
  block_size: 4,
  lora_id: null,
  medium: 'GPU',
  lora_name: null,
  ...extra,
});

t.test('notes fixtures decode to domain events', async (t) => {
  const expected = {
    kind: 'stored',
    engineHashes: [NOTES_HASH],
    parentEngineHash: null,
    tokenIds: NOTES_TOKENS,
    blockSize: 16,
    tier: 'gpu',
    loraName: null,
  };
  t.strictSame(dec(NOTES_CURRENT_STORED), {
    ts: NOTES_TS,
    dataParallelRank: 0,
    events: [expected],
    skipped: 0,
    skippedByReason: {},
  });
  t.strictSame(dec(NOTES_LEGACY_STORED), {
    ts: NOTES_TS,
    dataParallelRank: 0,
    events: [expected],
    skipped: 0,
    skippedByReason: {},
  });
  t.strictSame(dec(NOTES_CURRENT_REMOVED).events, [{ kind: 'removed', engineHashes: [NOTES_HASH], tier: 'gpu' }]);
  t.strictSame(dec(NOTES_CURRENT_CLEARED).events, [{ kind: 'cleared' }]);
  t.strictSame(dec(NOTES_EMPTY_BATCH), {
    ts: NOTES_TS,
    dataParallelRank: 0,
    events: [],
    skipped: 0,
    skippedByReason: {},
  });
});

t.test('legacy short forms and SGLang shapes', async (t) => {
  const v09 = dec(VLLM_V09_BATCH);
  t.equal(v09.dataParallelRank, null, 'v0.9 batch has no dp rank');
  t.strictSame(v09.events, [
    {
      kind: 'stored',
      engineHashes: [NOTES_HASH],
      parentEngineHash: null,
      tokenIds: [1, 2, 3, 4],
      blockSize: 4,
      tier: 'gpu',
      loraName: null,
    },
    { kind: 'removed', engineHashes: [0xffffffffffffffffn], tier: 'gpu' },
  ]);
  for (const [name, hex] of [
    ['7', SGLANG_STORED_7],
    ['8 with metadata map', SGLANG_STORED_8_META],
    ['6', SGLANG_STORED_6],
  ]) {
    const d = dec(hex!);
    t.equal(d.events.length, 1, `SGLang ${name}-element`);
    const ev = d.events[0]!;
    t.ok(ev.kind === 'stored' && ev.engineHashes[0] === SGLANG_HASH_VALUE, 'signed int64 hash kept exactly');
  }
  const cpu = dec(pack([1, [['BlockStored', [1n], 9n, [5, 6], 2, 3, 'CPU_PINNED']], 2]));
  t.strictSame(cpu.events, [
    {
      kind: 'stored',
      engineHashes: [1n],
      parentEngineHash: 9n,
      tokenIds: [5, 6],
      blockSize: 2,
      tier: 'cpu',
      loraName: 'lora_id:3',
    },
  ]);
  t.strictSame(dec(pack([1, [['BlockRemoved', [4], 'CPU']]])).events, [
    { kind: 'removed', engineHashes: [4n], tier: 'cpu' },
  ]);
});

t.test('hash encodings, outer map, unknown fields', async (t) => {
  const bin = Buffer.alloc(32, 0xab);
  const d = dec(
    pack([
      2.5,
      [storedMap({ block_hashes: [bin], parent_block_hash: Buffer.alloc(32, 1), future_field: { a: 1 } })],
      null,
    ]),
  );
  t.strictSame(d.events[0], {
    kind: 'stored',
    engineHashes: ['ab'.repeat(32)],
    parentEngineHash: '01'.repeat(32),
    tokenIds: [1, 2, 3, 4],
    blockSize: 4,
    tier: 'gpu',
    loraName: null,
  });
  const small = dec(pack([2.5, [storedMap({ block_hashes: [5], lora_name: 'sql-lora' })], 1]));
  t.equal(
    small.events[0]!.kind === 'stored' && small.events[0]!.engineHashes[0],
    5n,
    'small int hash normalised to bigint',
  );
  t.equal(small.events[0]!.kind === 'stored' && small.events[0]!.loraName, 'sql-lora');
  const outerMap = dec(pack({ ts: 3.25, events: [{ type: 'AllBlocksCleared' }], data_parallel_rank: 4 }));
  t.strictSame(outerMap, {
    ts: 3.25,
    dataParallelRank: 4,
    events: [{ kind: 'cleared' }],
    skipped: 0,
    skippedByReason: {},
  });
  const max = Buffer.from(
    '93cb41da3054981000009184a474797065ac426c6f636b52656d6f766564ac626c6f636b5f68617368657391cfffffffffffffffffa66d656469756da3475055a967726f75705f6964780000',
    'hex',
  );
  t.strictSame(
    decodeKvBatchPayload(max).events,
    [{ kind: 'removed', engineHashes: [0xffffffffffffffffn], tier: 'gpu' }],
    'uint64 max survives',
  );
  t.strictSame(decodeKvBatchPayload(new Uint8Array(max)).events.length, 1, 'plain Uint8Array accepted');
});

t.test('skipped events are counted, not fatal', async (t) => {
  const d = dec(
    pack([
      1,
      [
        { type: 'BlockRemovedV2', block_hashes: [1n] },
        ['SomethingNew', 1, 2],
        storedMap({ medium: 'DISK' }),
        { type: 'BlockRemoved', block_hashes: [1n], medium: 'EXTERNAL' },
        storedMap({ locality: 'REMOTE' }),
        storedMap({ group_idx: 1 }),
        storedMap({ token_ids: [1, 2, 3] }),
        storedMap({ locality: 'LOCAL', group_idx: 0 }),
      ],
      0,
    ]),
  );
  t.equal(d.skipped, 7);
  t.equal(d.events.length, 1);
  t.strictSame(d.skippedByReason, { 'unknown-type': 2, 'other-medium': 2, foreign: 2, inconsistent: 1 });
});

t.test('wrong shapes throw KvDecodeError', async (t) => {
  const bad: [string, Buffer][] = [
    ['garbage', Buffer.from('not msgpack at all')],
    ['truncated', Buffer.from(NOTES_CURRENT_STORED.slice(0, 100), 'hex')],
    ['empty', Buffer.alloc(0)],
    ['scalar', pack(42)],
    ['short array', pack([1])],
    ['events not array', pack([1, 'x', 0])],
    ['ts not number', pack(['x', [], 0])],
    ['trailing bytes', Buffer.concat([Buffer.from(NOTES_EMPTY_BATCH, 'hex'), Buffer.from([0])])],
  ];
  for (const [name, buf] of bad) t.throws(() => decodeKvBatchPayload(buf), KvDecodeError, name);
});

t.test('a malformed event costs only itself: the rest of its batch decodes', async (t) => {
  const bad: [string, unknown][] = [
    ['event scalar', 7],
    ['map without type', { block_hashes: [] }],
    ['hash not int', storedMap({ block_hashes: ['x'] })],
    ['negative token', storedMap({ token_ids: [1, 2, 3, -4] })],
    ['positional stored too short', ['BlockStored', [1n], null]],
    ['medium not a string', storedMap({ medium: 5 })],
  ];
  for (const [name, ev] of bad) {
    const d = decodeKvBatchPayload(pack([1, [storedMap(), ev, { type: 'AllBlocksCleared' }], 0]));
    t.strictSame(
      d.events.map((e) => e.kind),
      ['stored', 'cleared'],
      `${name}: the good events are kept`,
    );
    t.strictSame(d.skippedByReason, { malformed: 1 }, `${name}: counted as malformed`);
    t.equal(d.skipped, 1);
  }
});

t.test('cache_salt: from the first block extra keys (vLLM) or the metadata map (SGLang), root runs only', async (t) => {
  const salt = (ev: Record<string, unknown>) => {
    const [e] = decodeKvBatchPayload(pack([1, [ev], 0])).events;
    return e?.kind === 'stored' ? (e.cacheSalt ?? null) : 'not stored';
  };
  t.equal(salt(storedMap({ extra_keys: [['alice']] })), 'alice');
  t.equal(salt(storedMap({ extra_keys: [['sql', 'alice']], lora_name: 'sql' })), 'alice', 'after the LoRA name');
  t.equal(salt(storedMap({ extra_keys: [['sql']], lora_name: 'sql' })), null, 'the LoRA name alone is no salt');
  t.equal(salt(storedMap({ extra_keys: [null] })), null);
  t.equal(salt(storedMap({ extra_keys: [['alice']], parent_block_hash: 3n })), null, 'a child run inherits it');
  t.equal(salt(storedMap({ cache_salt: 'bob' })), 'bob');
  const positional = ['BlockStored', [1n], null, [1, 2, 3, 4], 4, null, 'GPU', null, [['carol']], 0];
  t.equal(salt(positional as unknown as Record<string, unknown>), 'carol', 'positional extra_keys');
  const [sglang] = dec(SGLANG_STORED_8_META).events;
  t.equal(sglang?.kind === 'stored' ? sglang.cacheSalt : undefined, 'salt', 'SGLang metadata map');
});
