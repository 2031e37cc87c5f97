import t from 'tap';
import { request } from 'undici';
import { Publisher } from 'zeromq';
import { encodeVllmBatch } from '../../../bench/sim/kv-encode.js';
import type { KvEvent } from '../../../indexer/events/types.js';
import { eventually, fleetConfig, MODEL, metricValue, startGateway, startSim } from '../../fixtures/gateway.js';
import { seeded } from '../../fixtures/strategy-fleet.js';

/**
 * 10,000 malformed KV event messages (seeded), interleaved with valid batches,
 * published by a raw ZeroMQ PUB socket standing in for one simulated worker's
 * event stream. Afterwards that worker's index holds exactly the valid blocks,
 * every undecodable payload was counted, the other worker's entries are
 * untouched, and the gateway still serves.
 */
const MALFORMED = Number(process.env.KVGATE_FUZZ_EVENTS ?? 10_000);
const SEED = Number(process.env.KVGATE_FUZZ_SEED ?? 0xbeef);
const BS = 16;

type Rand = () => number;
const int = (r: Rand, n: number) => Math.floor(r() * n);
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[int(r, xs.length)]!;
const hash64 = (r: Rand) => ((BigInt(int(r, 2 ** 32)) << 31n) ^ BigInt(int(r, 2 ** 31))) | 1n;
const tokens = (r: Rand, blocks: number) => Array.from({ length: blocks * BS }, () => int(r, 150_000));

/** msgpack by hand, so shapes the real encoder would never write can be produced. */
const mp = {
  arr: (n: number) => (n < 16 ? Buffer.from([0x90 | n]) : Buffer.from([0xdc, n >> 8, n & 0xff])),
  str: (s: string) => Buffer.concat([Buffer.from([0xd9, Buffer.byteLength(s)]), Buffer.from(s)]),
  f64: (x: number) => {
    const b = Buffer.alloc(9);
    b[0] = 0xcb;
    b.writeDoubleBE(x, 1);
    return b;
  },
  u64: (x: bigint) => {
    const b = Buffer.alloc(9);
    b[0] = 0xcf;
    b.writeBigUInt64BE(x, 1);
    return b;
  },
  int: (x: number) =>
    x >= 0 && x < 128
      ? Buffer.from([x])
      : Buffer.from([
          0xd2,
          ...(() => {
            const b = Buffer.alloc(4);
            b.writeInt32BE(x);
            return b;
          })(),
        ]),
  nil: Buffer.from([0xc0]),
};
const cat = (...parts: Buffer[]) => Buffer.concat(parts);

interface Message {
  frames: Buffer[];
  expect: 'valid' | 'error' | 'skip' | 'malformed' | 'unknown-parent';
}

/** The index model: hashes stored and not removed, each its own block (tokens are unique). */
class Expected {
  readonly live: bigint[] = [];
  stored = 0;

  validBatch(r: Rand): KvEvent[] {
    const events: KvEvent[] = [];
    for (let i = 0, n = 1 + int(r, 3); i < n; i++) {
      if (this.live.length > 4 && r() < 0.3) {
        const h = this.live.splice(int(r, this.live.length), 1)[0]!;
        events.push({ kind: 'removed', engineHashes: [h], tier: 'gpu' });
        continue;
      }
      const blocks = 1 + int(r, 3);
      const hashes = Array.from({ length: blocks }, () => hash64(r));
      // A child of a live block (its parent must still be indexed) or a new root.
      const parent = this.live.length > 0 && r() < 0.5 ? this.live[int(r, this.live.length)]! : null;
      events.push({
        kind: 'stored',
        engineHashes: hashes,
        parentEngineHash: parent,
        tokenIds: tokens(r, blocks),
        blockSize: BS,
        tier: 'gpu',
        loraName: null,
      });
      this.live.push(...hashes);
      this.stored += blocks;
    }
    return events;
  }
}

function validPayload(r: Rand, exp: Expected): Buffer {
  return encodeVllmBatch(
    { ts: Date.now() / 1000, events: exp.validBatch(r), dataParallelRank: null },
    r() < 0.5 ? 'current' : 'legacy',
  );
}

/** A malformed payload and what the decoder and index must make of it. */
function malformed(r: Rand, exp: Expected): { payload: Buffer; expect: Message['expect'] } {
  const ts = mp.f64(Date.now() / 1000);
  switch (int(r, 12)) {
    case 0: {
      const b = Buffer.alloc(1 + int(r, 300));
      for (let i = 0; i < b.length; i++) b[i] = int(r, 256);
      // Make sure it is no valid batch: a leading fixint is a complete msgpack value of the wrong shape.
      b[0] = int(r, 0x7f);
      return { payload: b, expect: 'error' };
    }
    case 1: {
      // A valid batch cut short; the real index must not see its events (they are not counted as stored).
      const probe = new Expected();
      probe.live.push(...exp.live);
      const full = encodeVllmBatch({ ts: 1, events: probe.validBatch(r), dataParallelRank: null }, 'current');
      return { payload: full.subarray(0, 1 + int(r, full.length - 1)), expect: 'error' };
    }
    case 2:
      return { payload: cat(mp.arr(3), ts, mp.str('not events'), mp.nil), expect: 'error' };
    case 3:
      return { payload: cat(mp.arr(1), ts), expect: 'error' };
    case 4: {
      const depth = pick(r, [100, 10_000, 200_000]);
      // Shallow nesting decodes to a batch whose one event is no event (skipped alone); deep nesting is no msgpack we accept.
      return {
        payload: cat(mp.arr(3), ts, Buffer.alloc(depth, 0x91), mp.nil, mp.nil),
        expect: depth === 100 ? 'malformed' : 'error',
      };
    }
    case 5:
      // Claimed lengths far beyond the data.
      return {
        payload: pick(r, [
          Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]),
          Buffer.from([0xdb, 0x7f, 0xff, 0xff, 0xff, 0x61]),
          Buffer.from([0xc6, 0xff, 0xff, 0xff, 0xf0, 0x00]),
        ]),
        expect: 'error',
      };
    case 6: {
      // A valid stored event (a new root) beside a broken one: the broken one is skipped alone, the block is indexed.
      const h = hash64(r);
      const stored = cat(
        mp.arr(5),
        mp.str('BlockStored'),
        mp.arr(1),
        mp.u64(h),
        mp.nil,
        cat(mp.arr(BS), ...tokens(r, 1).map((x) => mp.int(x % 100))),
        mp.int(BS),
      );
      exp.live.push(h);
      exp.stored++;
      return {
        payload: cat(mp.arr(3), ts, mp.arr(2), stored, mp.str('garbage'), mp.nil),
        expect: 'malformed',
      };
    }
    case 7: {
      // Wrong field types inside an otherwise fine event.
      const bad = pick(r, [
        cat(mp.arr(5), mp.str('BlockStored'), mp.str('hashes?'), mp.nil, mp.arr(0), mp.int(BS)),
        cat(
          mp.arr(5),
          mp.str('BlockStored'),
          mp.arr(1),
          mp.u64(hash64(r)),
          mp.nil,
          cat(mp.arr(1), mp.int(-5)),
          mp.int(BS),
        ),
        cat(mp.arr(5), mp.str('BlockStored'), mp.arr(1), mp.u64(hash64(r)), mp.nil, mp.arr(0), mp.str('16')),
        cat(mp.arr(2), mp.str('BlockRemoved'), mp.int(7)),
        cat(mp.arr(2), mp.int(7), mp.nil),
      ]);
      // The batch itself decodes; its one event is skipped as malformed (no decode error, no gap).
      return { payload: cat(mp.arr(3), ts, mp.arr(1), bad, mp.nil), expect: 'malformed' };
    }
    case 8:
      // Unknown event types decode and are skipped.
      return {
        payload: cat(
          mp.arr(3),
          ts,
          mp.arr(2),
          cat(mp.arr(2), mp.str('BlockTeleported'), mp.nil),
          cat(mp.arr(1), mp.str('')),
          mp.nil,
        ),
        expect: 'skip',
      };
    case 9: {
      // Token count not matching the blocks, another block size, a foreign medium: decoded, skipped, no effect.
      const h = hash64(r);
      const ev = pick(r, [
        cat(
          mp.arr(5),
          mp.str('BlockStored'),
          mp.arr(1),
          mp.u64(h),
          mp.nil,
          cat(mp.arr(3), mp.int(1), mp.int(2), mp.int(3)),
          mp.int(BS),
        ),
        cat(
          mp.arr(5),
          mp.str('BlockStored'),
          mp.arr(1),
          mp.u64(h),
          mp.nil,
          cat(mp.arr(8), ...Array.from({ length: 8 }, () => mp.int(1))),
          mp.int(8),
        ),
        cat(
          mp.arr(7),
          mp.str('BlockStored'),
          mp.arr(1),
          mp.u64(h),
          mp.nil,
          cat(mp.arr(BS), ...Array.from({ length: BS }, () => mp.int(2))),
          mp.int(BS),
          mp.nil,
          mp.str('DISK'),
        ),
      ]);
      return { payload: cat(mp.arr(3), ts, mp.arr(1), ev, mp.nil), expect: 'skip' };
    }
    case 10: {
      // A BlockStored whose parent the index has never seen.
      const ev = {
        kind: 'stored' as const,
        engineHashes: [hash64(r)],
        parentEngineHash: hash64(r),
        tokenIds: tokens(r, 1),
        blockSize: BS,
        tier: 'gpu' as const,
        loraName: null,
      };
      return {
        payload: encodeVllmBatch({ ts: 1, events: [ev], dataParallelRank: null }, 'current'),
        expect: 'unknown-parent',
      };
    }
    default:
      // Removal of blocks nobody stored: counted, no effect.
      return {
        payload: encodeVllmBatch(
          {
            ts: 1,
            events: [{ kind: 'removed', engineHashes: [hash64(r), hash64(r)], tier: 'gpu' }],
            dataParallelRank: null,
          },
          'current',
        ),
        expect: 'skip',
      };
  }
}

interface WorkerStats {
  index?: { blocks: number; unknownParent: number };
  events?: {
    lastSeq: string | null;
    decodeErrors: number;
    resets: number;
    gaps: number;
    batchesApplied: number;
    skippedByReason: Record<string, number>;
  };
}

async function workerStats(adminUrl: string, id: string): Promise<WorkerStats> {
  const body = (await (await request(`${adminUrl}/debug/workers`)).body.json()) as {
    index: { workers: Record<string, WorkerStats> };
  };
  return body.index.workers[id] ?? {};
}

t.test(`fuzz: ${MALFORMED} malformed KV event payloads`, async (t) => {
  const { workers } = await startSim(t.teardown.bind(t), 2, [
    '--speedup',
    '50',
    '--kv-events',
    'tcp://127.0.0.1:*',
    '--default-output-tokens',
    '4',
  ]);
  const pub = new Publisher({ linger: 0, sendHighWaterMark: 0 });
  t.teardown(() => pub.close());
  await pub.bind('tcp://127.0.0.1:*');
  const config = fleetConfig(workers, { strategy: 'kv' }) as {
    fleet: { workers: { id: string; kvEvents?: unknown }[] };
  };
  config.fleet.workers[1]!.kvEvents = { endpoint: pub.lastEndpoint! };
  const { url, adminUrl, gateway } = await startGateway(t.teardown.bind(t), config);
  const [real, fake] = [workers[0]!.worker, workers[1]!.worker];

  // Real blocks for the other worker, straight from its own engine.
  for (let i = 0; i < 4; i++) {
    const r = await request(`${workers[0]!.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt: `story ${i}: ${'once upon a time '.repeat(30)}`, max_tokens: 2 }),
    });
    await r.body.dump();
  }
  const realBefore = await eventually(
    async () => {
      const a = (await workerStats(adminUrl, real)).index?.blocks ?? 0;
      await new Promise((r) => setTimeout(r, 300));
      const b = (await workerStats(adminUrl, real)).index?.blocks ?? 0;
      return a > 0 && a === b ? b : undefined;
    },
    15_000,
    100,
  );

  let seq = 0n;
  const seq8 = () => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(seq++);
    return b;
  };
  const topic = Buffer.alloc(0);
  // The subscriber joins in the background: publish no-op batches until one arrives (the first seq seen is its baseline).
  await eventually(
    async () => {
      await pub.send([
        topic,
        seq8(),
        encodeVllmBatch({ ts: Date.now() / 1000, events: [], dataParallelRank: null }, 'current'),
      ]);
      return ((await workerStats(adminUrl, fake)).events?.batchesApplied ?? 0) > 0;
    },
    15_000,
    100,
  );

  const random = seeded(SEED);
  const exp = new Expected();
  const counts = { valid: 0, error: 0, skip: 0, malformed: 0, 'unknown-parent': 0, badFrames: 0 };
  const started = Date.now();
  for (let i = 0; i < MALFORMED; i++) {
    if (i % 8 === 0) {
      await pub.send([topic, seq8(), validPayload(random, exp)]);
      counts.valid++;
    }
    if (random() < 0.05) {
      // Wrong framing: not [topic, seq8, payload]. Dropped and counted without taking a sequence number.
      await pub.send(
        pick(random, [
          [topic],
          [topic, Buffer.from([1, 2, 3])],
          [topic, Buffer.alloc(7), Buffer.from([0x90])],
          [topic, Buffer.alloc(8), Buffer.alloc(1), Buffer.alloc(1)],
        ]),
      );
      counts.badFrames++;
      continue;
    }
    const m = malformed(random, exp);
    await pub.send([topic, seq8(), m.payload]);
    counts[m.expect]++;
    if (i % 500 === 0) await new Promise((r) => setImmediate(r));
  }
  await pub.send([topic, seq8(), validPayload(random, exp)]);
  counts.valid++;
  const last = (seq - 1n).toString();
  const after = await eventually(
    async () => {
      const s = await workerStats(adminUrl, fake);
      return s.events?.lastSeq === last ? s : undefined;
    },
    30_000,
    200,
  );
  t.comment(
    `published ${JSON.stringify(counts)} in ${((Date.now() - started) / 1000).toFixed(1)} s; live blocks ${exp.live.length} of ${exp.stored} stored`,
  );

  t.ok(MALFORMED >= 10_000 || process.env.KVGATE_FUZZ_EVENTS !== undefined, 'at least 10,000 malformed messages');
  t.equal(after.events!.resets, 0, 'no reset: sequence handling saw no gap');
  t.equal(
    after.events!.decodeErrors,
    counts.error + counts.badFrames,
    'every undecodable payload and bad framing was counted',
  );
  t.equal(
    after.events!.skippedByReason.malformed ?? 0,
    counts.malformed,
    'every malformed event inside a decodable batch was skipped alone and counted',
  );
  t.equal(after.index!.unknownParent, counts['unknown-parent'], 'orphan BlockStored events were counted and skipped');
  t.equal(after.index!.blocks, exp.live.length, 'the index holds exactly the valid blocks');
  const metrics = await (await request(`${url}/metrics`)).body.text();
  t.equal(
    metricValue(metrics, 'kvgate_kv_event_decode_errors_total', { worker: fake }),
    counts.error + counts.badFrames,
    'decode errors in /metrics',
  );
  t.equal((await workerStats(adminUrl, real)).index?.blocks, realBefore, "the other worker's entries are untouched");
  t.equal(gateway.child.exitCode, null, 'the gateway is still running');

  const r = await request(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'still there?' }], max_tokens: 2 }),
  });
  t.equal(r.statusCode, 200, 'the gateway serves');
  await r.body.dump();
});
