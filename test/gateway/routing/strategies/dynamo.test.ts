import t from 'tap';
import type { PrefixMatcher } from '../../../../gateway/routing/strategies/strategy.js';
import { createDynamoStrategy, dynamoParamsSchema } from '../../../../gateway/routing/strategies/dynamo.js';
import { ctx, deps, fakeMatcher, hashes, seeded, shares, worker } from '../../../fixtures/strategy-fleet.js';

const dynamo = (matcher: PrefixMatcher | undefined, params: Record<string, unknown> = {}) =>
  createDynamoStrategy(dynamoParamsSchema.parse(params), deps({ index: matcher }));

// isl 100 tokens, block 16 -> 7 request blocks (6 full blocks hashed).
// w1: overlap 3, 32 prefill tokens queued, 10 decode blocks:
//   prefill tokens 32 + (100 − 48) = 84 -> 5.25 blocks; decode 10 + 2 + 7 = 19.
// w2: no overlap, idle prefill, 10 decode blocks: prefill 100 -> 6.25 blocks; decode 10 + 0 + 7 = 17.
const workers = () => [
  worker('w1', { prefillTokens: 32, prefillRequests: 1, decodeBlocks: 10 }),
  worker('w2', { decodeBlocks: 10 }),
];
const request = () => ctx({ promptTokens: 100, hashes: hashes(6) });

t.test('logit = weight × potential prefill blocks + potential decode blocks, lowest wins', async (t) => {
  const m = fakeMatcher({ w1: 3 });
  // weight 1: w1 = 5.25 + 19 = 24.25, w2 = 6.25 + 17 = 23.25 -> w2.
  const d = dynamo(m).choose(request(), workers());
  t.equal(d.worker.id, 'w2');
  t.same(
    d.candidates!.map((c) => c.terms['logit']),
    [24.25, 23.25],
  );
  t.same(d.candidates![0]!.terms, {
    overlapBlocks: 3,
    potentialPrefillTokens: 84,
    potentialPrefillBlocks: 5.25,
    activeBlocks: 12,
    potentialDecodeBlocks: 19,
    logit: 24.25,
  });
  // weight 3: w1 = 15.75 + 19 = 34.75, w2 = 18.75 + 17 = 35.75 -> w1.
  const heavy = dynamo(m, { overlapScoreWeight: 3 }).choose(request(), workers());
  t.equal(heavy.worker.id, 'w1');
  t.equal(heavy.predictedCachedBlocks, 3);
  // weight 0: pure load (decode) balancing: 19 vs 17.
  t.equal(dynamo(fakeMatcher({ w1: 6 }), { overlapScoreWeight: 0 }).choose(request(), workers()).worker.id, 'w2');
});

t.test('ties go to the smaller tree, then at random', async (t) => {
  const idle = [worker('w1'), worker('w2'), worker('w3')];
  const withTrees = dynamo(fakeMatcher({}, { w1: 100, w2: 5, w3: 50 }));
  const d = withTrees.choose(request(), idle);
  t.equal(d.worker.id, 'w2');
  t.equal(d.explain['tieBreak'], 'smaller tree, then random');

  const s = dynamo(fakeMatcher({}));
  const random = seeded(9);
  const share = shares(3000, () => s.choose(ctx({ promptTokens: 100, hashes: hashes(6), random }), idle).worker.id);
  for (const id of ['w1', 'w2', 'w3']) t.ok(Math.abs(share[id]! - 1 / 3) < 0.05, `${id} share ${share[id]}`);
});

t.test('logits within 1e-5 tie (Dynamo epsilon)', async (t) => {
  // 0.000001 of a block apart: tied, so the tree decides.
  const a = worker('w1', { decodeBlocks: 4 });
  const b = worker('w2', { decodeBlocks: 4.000001 });
  const d = dynamo(fakeMatcher({}, { w1: 10, w2: 1 })).choose(request(), [a, b]);
  t.equal(d.worker.id, 'w2');
});

t.test('temperature samples by the normalised softmax', async (t) => {
  // Logits 7.25+7 = 14.25 + decode: 0, 10, 20 more.
  const ws = [worker('w1'), worker('w2', { decodeBlocks: 10 }), worker('w3', { decodeBlocks: 20 })];
  const s = dynamo(fakeMatcher({}), { temperature: 0.5 });
  const random = seeded(5);
  const share = shares(20_000, () => s.choose(ctx({ promptTokens: 100, hashes: hashes(6), random }), ws).worker.id);
  const e = [1, Math.exp(-1), Math.exp(-2)];
  const z = e[0]! + e[1]! + e[2]!;
  ['w1', 'w2', 'w3'].forEach((id, i) =>
    t.ok(Math.abs(share[id]! - e[i]! / z) < 0.015, `${id}: ${share[id]} vs ${(e[i]! / z).toFixed(3)}`),
  );
});

t.test('reports the rank and routes by load without blocks', async (t) => {
  const d = dynamo(fakeMatcher({ 'w1#2': 6 }), { overlapScoreWeight: 3 }).choose(request(), workers());
  t.equal(d.worker.id, 'w1');
  t.equal(d.dataParallelRank, 2);
  const none = dynamo(fakeMatcher({ w1: 6 })).choose(ctx({ promptTokens: 100 }), workers());
  t.equal(none.worker.id, 'w2');
  t.match(none.explain['index'], /no prompt blocks/);
  t.same(dynamoParamsSchema.parse({}), { overlapScoreWeight: 1, temperature: 0 });
});
