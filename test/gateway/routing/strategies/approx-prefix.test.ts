import t from 'tap';
import {
  approxPrefixParamsSchema,
  createApproxPrefixStrategy,
} from '../../../../gateway/routing/strategies/approx-prefix.js';
import { BLOCK, ctx, deps, hashes, seeded, worker } from '../../../fixtures/strategy-fleet.js';

const approx = (now: () => number, params: Record<string, unknown> = {}) =>
  createApproxPrefixStrategy(approxPrefixParamsSchema.parse(params), deps({ now }));

t.test('a second request with the same prefix follows the first', async (t) => {
  // The plain cost (no reuse credit, prefill weighed as decode), so the hand arithmetic below stays readable.
  const s = approx(() => 0, { prefillWeight: 1, reuseCredit: 0 });
  const workers = [worker('w1'), worker('w2'), worker('w3')];
  const random = seeded(5);
  const system = hashes(30, 3n);
  const first = s.choose(ctx({ hashes: system, random }), workers);
  t.equal(first.predictedCachedBlocks, 0);
  s.onRouted!(ctx({ hashes: system }), first);
  // A longer prompt sharing the 30-block prefix, and the first worker now a little busier.
  const turn2 = [...system, ...hashes(10, 4n)];
  const busier = workers.map((w) =>
    w.id === first.worker.id ? worker(w.id, { inflightRequests: 1, prefillTokens: 5 * BLOCK }) : w,
  );
  const second = s.choose(ctx({ hashes: turn2, random }), busier);
  t.equal(second.worker.id, first.worker.id);
  t.equal(second.predictedCachedBlocks, 30);
  t.equal(second.explain['overlapBlocks'], 30);
  t.match(second.explain['index'], /approximate index/);
  // Same scoring as kv: enough load still sends it elsewhere (40 − 30 + 50 queued > 40).
  const swamped = workers.map((w) => (w.id === first.worker.id ? worker(w.id, { prefillTokens: 50 * BLOCK }) : w));
  t.not(s.choose(ctx({ hashes: turn2, random }), swamped).worker.id, first.worker.id);
});

t.test('entries expire after the TTL', async (t) => {
  let now = 1_000;
  const s = approx(() => now, { ttlSeconds: 120 });
  const workers = [worker('w1'), worker('w2')];
  const prompt = hashes(20, 5n);
  s.onRouted!(ctx({ hashes: prompt }), { worker: workers[1]!, explain: {} });
  now += 119_000;
  let d = s.choose(ctx({ hashes: prompt }), workers);
  t.equal(d.worker.id, 'w2');
  t.equal(d.predictedCachedBlocks, 20);
  now += 2_000;
  d = s.choose(ctx({ hashes: prompt }), workers);
  t.equal(d.predictedCachedBlocks, 0, 'forgotten after 120 s');
  t.equal(d.candidates![1]!.terms['overlapBlocks'], 0);
});

t.test('records the data-parallel rank the decision named', async (t) => {
  const s = approx(() => 0);
  const workers = [worker('w1'), worker('w2')];
  const prompt = hashes(12, 6n);
  s.onRouted!(ctx({ hashes: prompt }), { worker: workers[0]!, explain: {}, dataParallelRank: 2 });
  const d = s.choose(ctx({ hashes: prompt }), workers);
  t.equal(d.worker.id, 'w1');
  t.equal(d.dataParallelRank, 2);
});

t.test('without blocks nothing is learned and routing is by load', async (t) => {
  const s = approx(() => 0);
  const workers = [worker('w1', { decodeBlocks: 3 }), worker('w2')];
  const d = s.choose(ctx({ promptTokens: 400 }), workers);
  t.equal(d.worker.id, 'w2');
  s.onRouted!(ctx({ promptTokens: 400 }), d);
  t.match(d.explain['index'], /no prompt blocks/);
  t.throws(() => approxPrefixParamsSchema.parse({ ttlSeconds: 0 }));
  t.same(
    approxPrefixParamsSchema.parse({}),
    {
      prefillWeight: 16,
      temperature: 0,
      reuseCredit: 200,
      cpuTierWeight: 0.75,
      queuedPrefill: 'prompt',
      ttlSeconds: 120,
      maxBlocks: 1_000_000,
    },
    'the kv defaults tuned on the replay',
  );
});
