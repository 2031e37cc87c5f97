import t from 'tap';
import type { PrefixMatcher } from '../../../../gateway/routing/strategies/strategy.js';
import { ActiveSequences } from '../../../../gateway/fleet/active-sequences.js';
import { createKvStrategy, kvParamsSchema } from '../../../../gateway/routing/strategies/kv.js';
import { BLOCK, ctx, deps, fakeMatcher, hashes, seeded, shares, worker } from '../../../fixtures/strategy-fleet.js';

// Most cases check the cost arithmetic at prefillWeight 1 without the reuse credit; the defaults have their own test.
const kv = (matcher?: PrefixMatcher, params: Record<string, unknown> = {}) =>
  createKvStrategy(kvParamsSchema.parse({ prefillWeight: 1, reuseCredit: 0, ...params }), deps({ index: matcher }));

const fleet = () => [worker('w1'), worker('w2'), worker('w3')];

t.test('prefers the idle worker that holds the prefix, and reports its terms', async (t) => {
  const m = fakeMatcher({ w2: 40 });
  const d = kv(m).choose(ctx({ hashes: hashes(64) }), fleet());
  t.equal(d.worker.id, 'w2');
  t.equal(d.predictedCachedBlocks, 40);
  t.equal(m.calls, 1, 'index matched once per request');
  t.same(d.candidates!.find((c) => c.worker === 'w2')!.terms, {
    overlapBlocks: 40,
    sharedPrefixBlocks: 0,
    exclusiveBlocks: 40,
    promptBlocks: 64,
    prefillBlocks: 24,
    queuedPrefillBlocks: 0,
    decodeBlocks: 0,
    cost: 24,
  });
  t.equal(d.candidates!.find((c) => c.worker === 'w1')!.terms['cost'], 64);
  t.equal(d.explain['cost'], 24);
  t.match(d.explain['rule'], /prefillWeight/);
  t.equal(d.dataParallelRank, undefined);
});

t.test('a heavily loaded worker with a modest overlap loses to an idle one', async (t) => {
  // w2: 64 − 10 + 100 queued = 154; w1 idle: 64.
  const workers = [worker('w1'), worker('w2', { prefillTokens: 100 * BLOCK, prefillRequests: 5, inflightRequests: 5 })];
  const d = kv(fakeMatcher({ w2: 10 })).choose(ctx({ hashes: hashes(64) }), workers);
  t.equal(d.worker.id, 'w1');
  t.equal(d.candidates![1]!.terms['cost'], 154);
  // Decode blocks weigh in too: 64 − 60 + 0 + 70 decode = 74 > 64.
  const busyDecode = [worker('w1'), worker('w2', { decodeBlocks: 70, decodeRequests: 3, inflightRequests: 3 })];
  t.equal(kv(fakeMatcher({ w2: 60 })).choose(ctx({ hashes: hashes(64) }), busyDecode).worker.id, 'w1');
  // ...but a long enough overlap still wins over the load: 64 − 60 + 50 = 54 < 64.
  const lighter = [worker('w1'), worker('w2', { decodeBlocks: 50, inflightRequests: 2 })];
  t.equal(kv(fakeMatcher({ w2: 60 })).choose(ctx({ hashes: hashes(64) }), lighter).worker.id, 'w2');
});

t.test('prefillWeight scales the prefill terms against decode blocks', async (t) => {
  // w1: overlap 32 of 64, decode 40 -> cost(pw) = pw*32 + 40; w2: no overlap, idle -> pw*64.
  const workers = [worker('w1', { decodeBlocks: 40 }), worker('w2')];
  const m = fakeMatcher({ w1: 32 });
  t.equal(kv(m, { prefillWeight: 1 }).choose(ctx({ hashes: hashes(64) }), workers).worker.id, 'w2', '72 vs 64');
  t.equal(kv(m, { prefillWeight: 2 }).choose(ctx({ hashes: hashes(64) }), workers).worker.id, 'w1', '104 vs 128');
});

t.test('equal costs go to the less loaded worker, then at random', async (t) => {
  const byInflight = [
    worker('w1', { inflightRequests: 3 }),
    worker('w2', { inflightRequests: 1 }),
    worker('w3', { inflightRequests: 2 }),
  ];
  t.equal(kv(fakeMatcher({})).choose(ctx({ hashes: hashes(8) }), byInflight).worker.id, 'w2');

  const s = kv(fakeMatcher({}));
  const random = seeded(42);
  const share = shares(3000, () => s.choose(ctx({ hashes: hashes(8), random }), fleet()).worker.id);
  for (const id of ['w1', 'w2', 'w3']) t.ok(Math.abs(share[id]! - 1 / 3) < 0.05, `${id} share ${share[id]}`);
});

t.test('temperature samples in proportion to the normalised softmax', async (t) => {
  // Costs 0, 10, 20 (decode blocks only): p ∝ exp(0), exp(−0.5), exp(−1) at T = 1.
  const workers = [worker('w1'), worker('w2', { decodeBlocks: 10 }), worker('w3', { decodeBlocks: 20 })];
  const s = kv(fakeMatcher({}), { temperature: 1 });
  const random = seeded(3);
  const share = shares(20_000, () => s.choose(ctx({ promptTokens: 0, hashes: [], random }), workers).worker.id);
  const z = 1 + Math.exp(-0.5) + Math.exp(-1);
  const expected = { w1: 1 / z, w2: Math.exp(-0.5) / z, w3: Math.exp(-1) / z };
  for (const [id, p] of Object.entries(expected))
    t.ok(Math.abs(share[id]! - p) < 0.015, `${id}: ${share[id]} vs ${p.toFixed(3)}`);
  const d = s.choose(ctx({ hashes: hashes(4), random }), workers);
  t.match(d.explain['rule'], /softmax\(T=1\)/);
});

t.test('CPU-tier blocks count 0.75 by default, never more than 1', async (t) => {
  const workers = [worker('w1'), worker('w2')];
  // w1: 40 blocks, all offloaded -> 30; w2: 32 on GPU -> 32.
  let d = kv(fakeMatcher({ w1: [40, 0], w2: 32 })).choose(ctx({ hashes: hashes(64) }), workers);
  t.equal(d.worker.id, 'w2');
  t.equal(d.candidates![0]!.terms['overlapBlocks'], 30);
  // 10 GPU + 30 CPU -> 10 + 22.5 = 32.5 > 32.
  d = kv(fakeMatcher({ w1: [40, 10], w2: 32 })).choose(ctx({ hashes: hashes(64) }), workers);
  t.equal(d.worker.id, 'w1');
  t.equal(d.explain['cpuTierBlocks'], 30);
  t.equal(d.predictedCachedBlocks, 40);
  d = kv(fakeMatcher({ w1: [40, 0], w2: 32 }), { cpuTierWeight: 1 }).choose(ctx({ hashes: hashes(64) }), workers);
  t.equal(d.worker.id, 'w1');
  t.throws(() => kvParamsSchema.parse({ cpuTierWeight: 1.5 }));
  t.throws(() => kvParamsSchema.parse({ prefillWieght: 1 }), 'strict schema');
  t.same(kvParamsSchema.parse({}), {
    prefillWeight: 16,
    reuseCredit: 200,
    temperature: 0,
    cpuTierWeight: 0.75,
    queuedPrefill: 'prompt',
  });
  t.throws(() => kvParamsSchema.parse({ queuedPrefill: 'whole' }), 'queuedPrefill is prompt or uncached');
});

t.test(
  'reuseCredit keeps a conversation with its cache through a queue that the immediate saving alone would not',
  async (t) => {
    // Prompt 64 blocks, w1 holds 40 of them but has 50 blocks of prefill queued; w2 is idle.
    // Without credit: w1 = 24 + 50 = 74 > w2 = 64. With credit 1: 74 − 40 = 34 < 64.
    const workers = [
      worker('w1', { prefillTokens: 50 * BLOCK, prefillRequests: 1, inflightRequests: 1 }),
      worker('w2'),
    ];
    const m = fakeMatcher({ w1: 40 });
    t.equal(
      kv(m).choose(ctx({ hashes: hashes(64) }), workers).worker.id,
      'w2',
      'greedy: the queue costs more than the saving',
    );
    const d = kv(m, { reuseCredit: 1 }).choose(ctx({ hashes: hashes(64) }), workers);
    t.equal(d.worker.id, 'w1', 'credited: the cache is worth keeping');
    t.equal(d.candidates![0]!.terms['cost'], 34);
    t.match(d.explain['rule'], /reuseCredit/);
    // The credit is bounded: a deep enough queue still sends the request elsewhere (24 + 120 − 40 = 104 > 64).
    const swamped = [worker('w1', { prefillTokens: 120 * BLOCK }), worker('w2')];
    t.equal(kv(m, { reuseCredit: 1 }).choose(ctx({ hashes: hashes(64) }), swamped).worker.id, 'w2');
    // At the defaults (weight 16, credit 200) the same 40 blocks hold through 50 queued blocks, and through
    // 8040 (16 × (24 + 8040 − 8000) = 1024, a tie that goes to less load), but not 8041.
    const defaults = createKvStrategy(kvParamsSchema.parse({}), deps({ index: m }));
    t.equal(defaults.choose(ctx({ hashes: hashes(64) }), workers).worker.id, 'w1');
    t.equal(
      defaults.choose(ctx({ hashes: hashes(64) }), [worker('w1', { prefillTokens: 8041 * BLOCK }), worker('w2')]).worker
        .id,
      'w2',
    );
    t.equal(
      defaults.choose(ctx({ hashes: hashes(64) }), [worker('w1', { prefillTokens: 8039 * BLOCK }), worker('w2')]).worker
        .id,
      'w1',
    );
    t.throws(() => kvParamsSchema.parse({ reuseCredit: -1 }));
  },
);

t.test('the best data-parallel rank is chosen and reported', async (t) => {
  const m = fakeMatcher({ 'w1#0': 5, 'w1#1': 30, 'w2#0': 20 });
  const d = kv(m).choose(ctx({ hashes: hashes(64) }), [worker('w1'), worker('w2')]);
  t.equal(d.worker.id, 'w1');
  t.equal(d.dataParallelRank, 1);
  t.equal(d.predictedCachedBlocks, 30);
  const other = kv(fakeMatcher({ 'w1#0': 5, 'w2#3': 20 })).choose(ctx({ hashes: hashes(64) }), [
    worker('w1'),
    worker('w2'),
  ]);
  t.equal(other.worker.id, 'w2');
  t.equal(other.dataParallelRank, 3);
});

t.test('without prompt blocks: overlap 0, least cost by load, and explain says why', async (t) => {
  const m = fakeMatcher({ w1: 50 });
  const workers = [
    worker('w1', { prefillTokens: 64 }),
    worker('w2', { decodeBlocks: 2 }),
    worker('w3', { prefillTokens: 16, decodeBlocks: 2 }),
  ];
  const d = kv(m).choose(ctx({ promptTokens: 500 }), workers);
  t.equal(d.worker.id, 'w2', 'costs 500/16 + 4, + 2, + 3');
  t.equal(m.calls, 0, 'no index lookup without blocks');
  t.equal(d.predictedCachedBlocks, 0);
  t.match(d.explain['index'], /no prompt blocks/);
  const none = kv(undefined).choose(ctx({ hashes: hashes(8) }), workers);
  t.equal(none.worker.id, 'w2');
  t.match(none.explain['index'], /no kv events index configured/);
});

t.test('an index that fills after creation is read per request', async (t) => {
  const targets: Record<string, number> = {};
  const s = createKvStrategy(kvParamsSchema.parse({}), deps({ index: fakeMatcher(targets) }));
  targets['w3'] = 8;
  t.equal(s.choose(ctx({ hashes: hashes(8) }), fleet()).worker.id, 'w3');
});

t.test('the reuse credit counts only blocks no other candidate holds: a joining worker gets traffic', async (t) => {
  // A 32-block shared preamble on w1 and w2, nothing on w3 (it just joined); w1 and w2 have 40 blocks queued.
  const m = fakeMatcher({ w1: 32, w2: 32 });
  const busy = { prefillTokens: 40 * BLOCK, prefillRequests: 2, inflightRequests: 2 };
  const fleet = [worker('w1', busy), worker('w2', busy), worker('w3')];
  const defaults = createKvStrategy(kvParamsSchema.parse({}), deps({ index: m }));
  const d = defaults.choose(ctx({ hashes: hashes(64) }), fleet);
  // w1, w2: 16 × (32 + 40 − 0) = 1152; w3: 16 × 64 = 1024. Crediting the shared 32 blocks would pin it to w1/w2.
  t.equal(d.worker.id, 'w3');
  t.same(
    d.candidates!.map((c) => c.terms['exclusiveBlocks']),
    [0, 0, 0],
  );
  const idleSharer = defaults.choose(ctx({ hashes: hashes(64) }), [worker('w1', busy), worker('w2'), worker('w3')]);
  t.equal(idleSharer.worker.id, 'w2', 'the idle worker holding the shared prefix saves its prefill');
  // A conversation's own history (held by w1 alone) is credited: only the part beyond w2's 32 blocks.
  const history = createKvStrategy(kvParamsSchema.parse({}), deps({ index: fakeMatcher({ w1: 50, w2: 32 }) })).choose(
    ctx({ hashes: hashes(64) }),
    [worker('w1', busy), worker('w2'), worker('w3')],
  );
  t.equal(history.worker.id, 'w1', '18 blocks only w1 holds outweigh its 40-block queue');
  t.same(
    history.candidates!.map((c) => c.terms['exclusiveBlocks']),
    [18, 0, 0],
  );
});

t.test('no reuse credit for a prefix many requests share: a restarted worker gets its share back', async (t) => {
  // w1 alone holds a 20-block system prompt that many different questions continue from (w2 restarted empty).
  // w1 carries 100 decode blocks; each prompt is 24 blocks.
  const fleet = [worker('w1', { decodeBlocks: 100, decodeRequests: 5, inflightRequests: 5 }), worker('w2')];
  const defaults = (targets: Parameters<typeof fakeMatcher>[0]) =>
    createKvStrategy(kvParamsSchema.parse({}), deps({ index: fakeMatcher(targets) }));
  const shared = defaults({ w1: [20, 20, 20] }).choose(ctx({ hashes: hashes(24) }), fleet);
  // w1: 16 × (24 − 20) + 100 = 164; w2: 16 × 24 = 384. The prefix still saves its prefill here...
  t.equal(shared.worker.id, 'w1');
  t.same(
    shared.candidates!.map((c) => [c.terms['sharedPrefixBlocks'], c.terms['exclusiveBlocks']]),
    [
      [20, 0],
      [0, 0],
    ],
  );
  // ...but not the reuse credit, so load moves requests once it outweighs that saving: 16 × 4 + 400 > 384.
  const busier = [worker('w1', { decodeBlocks: 400, decodeRequests: 20, inflightRequests: 20 }), worker('w2')];
  t.equal(defaults({ w1: [20, 20, 20] }).choose(ctx({ hashes: hashes(24) }), busier).worker.id, 'w2');
  // A conversation's own 20 blocks (no other request branches from them) keep the credit and stay.
  const own = defaults({ w1: 20 }).choose(ctx({ hashes: hashes(24) }), busier);
  t.equal(own.worker.id, 'w1');
  t.equal(own.candidates![0]!.terms['exclusiveBlocks'], 20);
  // Only the part beyond the shared prefix is credited.
  const partly = defaults({ w1: [20, 20, 12] }).choose(ctx({ hashes: hashes(24) }), busier);
  t.equal(partly.candidates![0]!.terms['exclusiveBlocks'], 8);
});

t.test('queuedPrefill: uncached counts only what the queued requests still have to prefill', async (t) => {
  // w1 prefills a 100-block follow-up with 96 blocks cached; w2 a 20-block prompt with nothing cached.
  // Another replica published 10 more blocks of whole prompts on w1.
  const inPrefill = (id: string, promptTokens: number, uncachedTokens: number, remote = 0) => {
    const active = new ActiveSequences();
    active.start(promptTokens, promptTokens / BLOCK, { uncachedTokens });
    return { ...worker(id, { prefillTokens: promptTokens + remote, prefillRequests: 1 }), active };
  };
  const workers = [inPrefill('w1', 100 * BLOCK, 4 * BLOCK, 10 * BLOCK), inPrefill('w2', 20 * BLOCK, 20 * BLOCK)];
  const prompt = kv(undefined).choose(ctx({ hashes: hashes(8) }), workers);
  t.equal(prompt.worker.id, 'w2', 'prompt (the default): 110 blocks queued on w1 against 20 on w2');
  t.equal(prompt.candidates![0]!.terms['queuedPrefillBlocks'], 110);
  const uncached = kv(undefined, { queuedPrefill: 'uncached' }).choose(ctx({ hashes: hashes(8) }), workers);
  t.equal(uncached.worker.id, 'w1', 'uncached: 4 local + 10 remote on w1 against 20 on w2');
  t.equal(uncached.candidates![0]!.terms['queuedPrefillBlocks'], 14);
  t.equal(uncached.candidates![1]!.terms['queuedPrefillBlocks'], 20);
  // A hand-built view without in-flight tracking falls back to the published load.
  t.equal(
    kv(undefined, { queuedPrefill: 'uncached' }).choose(ctx({ hashes: hashes(8) }), [
      worker('w3', { prefillTokens: 5 * BLOCK }),
    ]).candidates![0]!.terms['queuedPrefillBlocks'],
    5,
  );
});
