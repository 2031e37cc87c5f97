import t from 'tap';
import { encodeVllmBatch } from '../../../bench/sim/kv-publisher.js';
import type { KvEvent } from '../../../indexer/events/types.js';
import {
  NOTES_CURRENT_CLEARED,
  NOTES_CURRENT_REMOVED,
  NOTES_CURRENT_STORED,
  NOTES_EMPTY_BATCH,
  NOTES_HASH,
  NOTES_LEGACY_STORED,
  NOTES_TOKENS,
  NOTES_TS,
} from '../../fixtures/wire/kv-payloads.js';

const stored: KvEvent = {
  kind: 'stored',
  engineHashes: [NOTES_HASH],
  parentEngineHash: null,
  tokenIds: NOTES_TOKENS,
  blockSize: 16,
  tier: 'gpu',
  loraName: null,
};
const hex = (events: KvEvent[], format: 'current' | 'legacy' = 'current', dataParallelRank: number | null = 0) =>
  encodeVllmBatch({ ts: NOTES_TS, events, dataParallelRank }, format).toString('hex');

t.test('matches msgspec bytes from the notes, byte for byte', async (t) => {
  t.equal(hex([stored]), NOTES_CURRENT_STORED, 'current BlockStored');
  t.equal(hex([stored]).length / 2, 202);
  t.equal(hex([stored], 'legacy'), NOTES_LEGACY_STORED, 'legacy BlockStored');
  t.equal(hex([{ kind: 'removed', engineHashes: [NOTES_HASH], tier: 'gpu' }]), NOTES_CURRENT_REMOVED, 'BlockRemoved');
  t.equal(hex([{ kind: 'cleared' }]), NOTES_CURRENT_CLEARED, 'AllBlocksCleared');
  t.equal(hex([]), NOTES_EMPTY_BATCH, 'empty batch');
});

t.test('legacy short events', async (t) => {
  t.equal(
    hex([{ kind: 'removed', engineHashes: [NOTES_HASH], tier: 'cpu' }], 'legacy'),
    '93cb41da305498100000919' + '4ac426c6f636b52656d6f76656491cf0123456789abcdefa343505500' + '00',
  );
  t.equal(
    hex([{ kind: 'cleared' }], 'legacy'),
    '93cb41da305498100000' + '9191b0416c6c426c6f636b73436c6561726564' + '00',
  );
});

t.test('msgspec minimal int, string and container forms', async (t) => {
  const ev = (tokens: number[], hash: bigint, loraName: string | null = null): KvEvent => ({
    kind: 'stored',
    engineHashes: [hash],
    parentEngineHash: hash,
    tokenIds: tokens,
    blockSize: tokens.length,
    tier: 'gpu',
    loraName,
  });
  const legacy = (e: KvEvent, rank: number | null = null) =>
    encodeVllmBatch({ ts: 0.5, events: [e], dataParallelRank: rank }, 'legacy').toString('hex');
  // tokens 127 (fixint), 128 (uint8), 300 (uint16), 70000 (uint32), 2^32 (uint64); hash 5 as fixint, like msgspec.
  const out = legacy(ev([127, 128, 300, 70000, 2 ** 32], 5n), 300);
  t.ok(
    out.startsWith(
      '93cb3fe0000000000000' +
        '919cab426c6f636b53746f726564' +
        '9105' +
        '05' +
        '95' +
        '7f' +
        'cc80' +
        'cd012c' +
        'ce00011170' +
        'cf0000000100000000' +
        '05',
    ),
  );
  t.ok(out.endsWith('cd012c'), 'dp rank 300 as uint16');
  t.match(
    legacy(ev([1], 0xffffffffffffffffn)),
    /53746f72656491cfffffffffffffffffcfffffffffffffffff91/,
    'uint64 max, hash and parent',
  );
  t.match(legacy(ev([1], -1n)), /^93cb3fe0000000000000919cab426c6f636b53746f72656491ff/, 'negative fixint');
  t.match(legacy(ev([1], -0x0123456789abcdefn)), /91d3fedcba9876543211/, 'int64');
  const name = 'x'.repeat(40);
  t.match(legacy(ev([1], 1n, name)), new RegExp(`d928${Buffer.from(name).toString('hex')}`), 'str8 for 32..255 bytes');
  const bin = 'ab'.repeat(32);
  const withBin = encodeVllmBatch(
    { ts: 1, events: [{ kind: 'removed', engineHashes: [bin], tier: 'gpu' }], dataParallelRank: null },
    'current',
  );
  t.match(withBin.toString('hex'), new RegExp(`91c420${bin}`), '32-byte hash as bin8');
  t.ok(withBin.toString('hex').endsWith('c0'), 'nil dp rank');
  const many = Array.from({ length: 70000 }, () => 1);
  t.match(legacy(ev(many, 1n)), /dd00011170/, 'array32');
});
