import t from 'tap';
import type { PrefixMatcher } from '../../../../gateway/routing/strategies/strategy.js';
import {
  createLlmdPreciseStrategy,
  llmdPreciseParamsSchema,
} from '../../../../gateway/routing/strategies/llmd-precise.js';
import { ActiveSequences } from '../../../../gateway/fleet/active-sequences.js';
import { ctx, deps, fakeMatcher, hashes, seeded, shares, worker } from '../../../fixtures/strategy-fleet.js';

const llmd = (matcher: PrefixMatcher | undefined, params: Record<string, unknown> = {}) =>
  createLlmdPreciseStrategy(llmdPreciseParamsSchema.parse(params), deps({ index: matcher }));

// Runs 8 / 4 / 0 blocks of 10; waiting 2 / 0 / 4; decode blocks 50 / 100 / 0.
const fleet = () => [
  worker('w1', { prefillRequests: 2, decodeBlocks: 50 }),
  worker('w2', { prefillRequests: 0, decodeBlocks: 100 }),
  worker('w3', { prefillRequests: 4, decodeBlocks: 0 }),
];
const matcher = () => fakeMatcher({ w1: 8, w2: 4 });

t.test('weighted sum of prefix, kv-utilization and queue scores; highest wins', async (t) => {
  // prefix (min-max over holders 4..8): 1, 0, 0; queue (4 − q)/4: .5, 1, 0;
  // kv 1 − d/100: .5, 0, 1. Defaults 2/1/1: w1 = 2+.5+.5 = 3, w2 = 0+0+1 = 1, w3 = 0+1+0 = 1.
  const d = llmd(matcher()).choose(ctx({ hashes: hashes(10) }), fleet());
  t.equal(d.worker.id, 'w1');
  t.same(
    d.candidates!.map((c) => c.terms['score']),
    [3, 1, 1],
  );
  t.same(d.candidates![1]!.terms, {
    prefixRunBlocks: 4,
    prefixScore: 0,
    queueWaiting: 0,
    queueScore: 1,
    kvUsage: 1,
    kvUtilizationScore: 0,
    score: 1,
  });
  t.equal(d.predictedCachedBlocks, 8);
  t.same(llmdPreciseParamsSchema.parse({}), {
    prefixWeight: 2,
    kvUtilizationWeight: 1,
    queueWeight: 1,
    prefixNormalization: 'min-max',
    kvCapacityBlocks: null,
  });
});

t.test('load scorers can outvote the prefix scorer', async (t) => {
  // prefix weight 1, queue 3: w1 = 1 + .5 + 1.5 = 3, w2 = 0 + 0 + 3 = 3, w3 = 0 + 1 + 0 = 1 -> w1/w2 tie, random.
  const s = llmd(matcher(), { prefixWeight: 1, queueWeight: 3 });
  const random = seeded(11);
  const share = shares(2000, () => s.choose(ctx({ hashes: hashes(10), random }), fleet()).worker.id);
  t.equal(share['w3'], undefined);
  t.ok(Math.abs(share['w1']! - 0.5) < 0.05 && Math.abs(share['w2']! - 0.5) < 0.05, JSON.stringify(share));
  // queue 4: w2 = 4 beats w1 = 1 + .5 + 2 = 3.5.
  t.equal(
    llmd(matcher(), { prefixWeight: 1, queueWeight: 4 }).choose(ctx({ hashes: hashes(10) }), fleet()).worker.id,
    'w2',
  );
});

t.test('prompt normalisation and an absolute KV capacity', async (t) => {
  // prefix 8/10, 4/10, 0; kv with 200 blocks: .75, .5, 1; queue .5, 1, 0.
  // 2/1/1: w1 = 1.6+.75+.5 = 2.85, w2 = .8+.5+1 = 2.3, w3 = 0+1+0 = 1.
  const d = llmd(matcher(), { prefixNormalization: 'prompt', kvCapacityBlocks: 200 }).choose(
    ctx({ hashes: hashes(10) }),
    fleet(),
  );
  t.same(
    d.candidates!.map((c) => c.terms['score']),
    [2.85, 2.3, 1],
  );
  t.equal(d.worker.id, 'w1');
  t.equal(d.explain['kvUsageFrom'], 'held blocks / 200 (absolute)');
});

t.test('with a known capacity the usage is absolute: a lightly used fleet is not scored as full', async (t) => {
  // Both nearly idle (10 and 20 of 1000 blocks), kv weight 3. Relative to the busiest, w2 looks
  // full: w1 = 3 × .5 + 0 = 1.5 beats w2 = 0 + 1 (queue). Absolute: w1 = 2.97, w2 = 2.94 + 1 = 3.94.
  const ws = [worker('w1', { decodeBlocks: 10, prefillRequests: 1 }), worker('w2', { decodeBlocks: 20 })];
  const relative = llmd(fakeMatcher({}), { kvUtilizationWeight: 3 }).choose(ctx({ hashes: hashes(10) }), ws);
  t.same(
    relative.candidates!.map((c) => c.terms['kvUsage']),
    [0.5, 1],
  );
  t.equal(relative.worker.id, 'w1');
  const absolute = llmd(fakeMatcher({}), { kvUtilizationWeight: 3, kvCapacityBlocks: 1000 }).choose(
    ctx({ hashes: hashes(10) }),
    ws,
  );
  t.same(
    absolute.candidates!.map((c) => c.terms['kvUsage']),
    [0.01, 0.02],
  );
  t.equal(absolute.worker.id, 'w2');
});

t.test('usage counts the blocks in-flight requests hold, shared prefixes once, as the engine does', async (t) => {
  const active = new ActiveSequences();
  const shared = hashes(40, 5n);
  // Two requests sharing 40 prompt blocks, 10 output blocks each: 40 + 20 = 60 held, not 100.
  active.start(640, 50, { hashes: shared, promptBlocks: 40 });
  active.start(640, 50, { hashes: shared, promptBlocks: 40 });
  const w1 = { ...worker('w1', { decodeBlocks: 100 }), active };
  const d = llmd(fakeMatcher({}), { kvCapacityBlocks: 200 }).choose(ctx({ hashes: hashes(10) }), [w1, worker('w2')]);
  t.equal(d.candidates![0]!.terms['kvUsage'], 0.3);
});

t.test("llm-d's min-max quirk: the shortest holder scores like a non-holder; a sole holder scores 1", async (t) => {
  const idle = [worker('w1'), worker('w2'), worker('w3')];
  const d = llmd(fakeMatcher({ w1: 8, w2: 7 })).choose(ctx({ hashes: hashes(10) }), idle);
  t.same(
    d.candidates!.map((c) => c.terms['prefixScore']),
    [1, 0, 0],
  );
  const sole = llmd(fakeMatcher({ w3: 1 })).choose(ctx({ hashes: hashes(10) }), idle);
  t.equal(sole.worker.id, 'w3');
  t.equal(sole.candidates![2]!.terms['prefixScore'], 1);
});

t.test('without blocks only the load scorers count', async (t) => {
  const d = llmd(matcher()).choose(ctx({ promptTokens: 300 }), fleet());
  // w1 = .5 + .5 = 1, w2 = 0 + 1 = 1, w3 = 1 + 0 = 1: all tie -> any; every prefix score 0.
  t.same(
    d.candidates!.map((c) => c.terms['prefixScore']),
    [0, 0, 0],
  );
  t.match(d.explain['index'], /no prompt blocks/);
  t.equal(d.predictedCachedBlocks, 0);
});
