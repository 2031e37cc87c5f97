import t from 'tap';
import type { PrefixMatcher } from '../../../../gateway/routing/strategies/strategy.js';
import { createDynamoStrategy, dynamoParamsSchema } from '../../../../gateway/routing/strategies/dynamo.js';
import { ActiveSequences, type TicketPrompt } from '../../../../gateway/fleet/active-sequences.js';
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
    creditBlocks: 3,
    newBlocks: 7,
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

t.test('only exactly equal logits tie (no tolerance)', async (t) => {
  // 0.000001 of a block apart: w1 is cheaper, whatever the trees say.
  const a = worker('w1', { decodeBlocks: 4 });
  const b = worker('w2', { decodeBlocks: 4.000001 });
  const d = dynamo(fakeMatcher({}, { w1: 10, w2: 1 })).choose(request(), [a, b]);
  t.equal(d.worker.id, 'w1');
  t.equal(d.explain['tied'], 1);
  // Exactly equal: the smaller tree (w2) takes it.
  const e = dynamo(fakeMatcher({}, { w1: 10, w2: 1 })).choose(request(), [a, worker('w2', { decodeBlocks: 4 })]);
  t.equal(e.worker.id, 'w2');
});

/** A worker whose in-flight requests are tracked at block grain, as `Fleet.start` does. */
function tracked(id: string, requests: Array<{ promptTokens: number; blocks: number } & TicketPrompt>) {
  const active = new ActiveSequences();
  for (const r of requests) active.start(r.promptTokens, r.blocks, r);
  return { ...worker(id), active };
}

t.test('prefill term counts only the uncached part of each queued request', async (t) => {
  // Both workers have one 96-token request awaiting its first token. On w1 it was
  // predicted 5 blocks cached (16 uncached tokens), on w2 none (96 uncached).
  const w1 = tracked('w1', [{ promptTokens: 96, blocks: 6, uncachedTokens: 16, promptBlocks: 6 }]);
  const w2 = tracked('w2', [{ promptTokens: 96, blocks: 6, uncachedTokens: 96, promptBlocks: 6 }]);
  const d = dynamo(fakeMatcher({})).choose(ctx({ promptTokens: 32, hashes: hashes(2, 9n) }), [w1, w2]);
  // w1: (16 + 32)/16 = 3 + decode 0 + 2 = 5; w2: (96 + 32)/16 = 8 + 2 = 10.
  t.equal(d.worker.id, 'w1');
  t.same(
    d.candidates!.map((c) => [c.terms['potentialPrefillTokens'], c.terms['logit']]),
    [
      [48, 5],
      [128, 10],
    ],
  );
  // The whole prompt is still on the ticket for strategies that want it.
  t.equal(w1.load.prefillTokens, 0, 'hand-built load is independent of the block view');
});

t.test('decode term: unique active block hashes, shared prefixes once, no output blocks by default', async (t) => {
  const shared = hashes(4, 3n);
  // w1: two in-flight requests sharing 4 blocks + 1 own each -> 6 unique blocks (not 10), 64 output blocks.
  const w1 = tracked('w1', [
    { promptTokens: 80, blocks: 9, hashes: [...shared, 101n], promptBlocks: 5 },
    { promptTokens: 80, blocks: 9, hashes: [...shared, 102n], promptBlocks: 5 },
  ]);
  const w2 = tracked('w2', [{ promptTokens: 128, blocks: 8, hashes: hashes(8, 4n), promptBlocks: 8 }]);
  // The new request shares the 4-block prefix: on w1 only its 2 other blocks are new.
  const req = () => ctx({ promptTokens: 96, hashes: [...shared, 201n, 202n] });
  const d = dynamo(fakeMatcher({}), { overlapScoreWeight: 0 }).choose(req(), [w1, w2]);
  const terms = Object.fromEntries(d.candidates!.map((c) => [c.worker, c.terms]));
  t.same([terms['w1']!['activeBlocks'], terms['w1']!['newBlocks'], terms['w1']!['potentialDecodeBlocks']], [6, 2, 8]);
  t.same([terms['w2']!['activeBlocks'], terms['w2']!['newBlocks'], terms['w2']!['potentialDecodeBlocks']], [8, 6, 14]);
  t.equal(d.worker.id, 'w1');
  // Output-block tracking (off by default upstream) adds w1's 8 expected output blocks: 16 vs 14.
  const out = dynamo(fakeMatcher({}), { overlapScoreWeight: 0, trackOutputBlocks: true }).choose(req(), [w1, w2]);
  t.equal(out.worker.id, 'w2');
  t.equal(out.candidates![0]!.terms['activeBlocks'], 14);
});

t.test('host-tier blocks earn 0.75 of a GPU block of prefill credit', async (t) => {
  // w1 holds 4 blocks, all on GPU; w2 holds 5, only 1 on GPU: credit 1 + 0.75 × 4 = 4 blocks.
  const m = fakeMatcher({ w1: 4, w2: [5, 1] });
  const d = dynamo(m).choose(request(), [worker('w1'), worker('w2')]);
  t.same(
    d.candidates!.map((c) => c.terms['creditBlocks']),
    [4, 4],
  );
  t.equal(d.explain['tied'], 2, 'equal credit, equal cost');
  const host1 = dynamo(m, { hostTierWeight: 1 }).choose(request(), [worker('w1'), worker('w2')]);
  t.equal(host1.worker.id, 'w2');
});

t.test('router queue threshold: reported when every worker is over it', async (t) => {
  const busy = [worker('w1', { prefillTokens: 5000 }), worker('w2', { prefillTokens: 4000 })];
  const d = dynamo(fakeMatcher({}), { routerQueueThreshold: 1, maxNumBatchedTokens: 2048 }).choose(request(), busy);
  t.match(d.explain['routerQueue'], /would hold/);
  const one = [worker('w1', { prefillTokens: 5000 }), worker('w2', { prefillTokens: 1000 })];
  const e = dynamo(fakeMatcher({}), { routerQueueThreshold: 1, maxNumBatchedTokens: 2048 }).choose(request(), one);
  t.equal(e.explain['routerQueue'], undefined);
  const off = dynamo(fakeMatcher({}), { routerQueueThreshold: null }).choose(request(), busy);
  t.equal(off.explain['routerQueue'], undefined);
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
  t.same(dynamoParamsSchema.parse({}), {
    overlapScoreWeight: 1,
    temperature: 0,
    trackOutputBlocks: false,
    hostTierWeight: 0.75,
    diskTierWeight: 0.25,
    routerQueueThreshold: 4,
    maxNumBatchedTokens: 8192,
  });
});
