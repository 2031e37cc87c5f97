import t from 'tap';
import type { PrefixMatcher } from '../../../../gateway/routing/strategies/strategy.js';
import {
  createSglangCacheAwareStrategy,
  sglangCacheAwareParamsSchema,
} from '../../../../gateway/routing/strategies/sglang-cache-aware.js';
import { ctx, deps, fakeMatcher, hashes, seeded, shares, worker } from '../../../fixtures/strategy-fleet.js';

const events = (matcher: PrefixMatcher, params: Record<string, unknown> = {}) =>
  createSglangCacheAwareStrategy(
    sglangCacheAwareParamsSchema.parse({ source: 'events', ...params }),
    deps({ index: matcher }),
  );

t.test('defaults are the command line ones (not the library 0.5 / 32 / 1.1), with no age limit', async (t) => {
  t.same(sglangCacheAwareParamsSchema.parse({}), {
    cacheThreshold: 0.3,
    balanceAbsThreshold: 64,
    balanceRelThreshold: 1.5,
    source: 'approx',
    ttlSeconds: 86_400,
    maxBlocks: 1_000_000,
  });
});

t.test('the imbalance gate triggers exactly past both thresholds', async (t) => {
  // `cached` holds the whole prompt and is the busiest; `idle` is the least loaded.
  const m = fakeMatcher({ cached: 10 });
  const pick = (min: number, max: number) =>
    events(m).choose(ctx({ hashes: hashes(10) }), [
      worker('cached', { inflightRequests: max }),
      worker('idle', { inflightRequests: min }),
    ]);
  const cases: [number, number, string, string][] = [
    [100, 164, 'cached', 'max − min = 64, not > 64'],
    [100, 165, 'idle', '65 > 64 and 165 > 150'],
    [200, 300, 'cached', '100 > 64 but 300 is not > 1.5 × 200'],
    [200, 301, 'idle', '101 > 64 and 301 > 300'],
    [0, 64, 'cached', '64 is not > 64'],
    [0, 65, 'idle', '65 > 64 and 65 > 0'],
  ];
  for (const [min, max, expected, why] of cases) {
    const d = pick(min, max);
    t.equal(d.worker.id, expected, why);
    t.equal(d.explain['rule'] === 'imbalanced: least in-flight requests', expected === 'idle', `${why}: rule`);
  }
});

t.test('balanced: follow the cache only above the match-rate threshold', async (t) => {
  // 10 blocks of 16 = 160 tokens. 3 blocks = 0.3 (not above) -> least loaded; 4 = 0.4 -> deepest.
  const workers = [
    worker('cached', { inflightRequests: 5 }),
    worker('idle', { inflightRequests: 1 }),
    worker('other', { inflightRequests: 3 }),
  ];
  let d = events(fakeMatcher({ cached: 3, other: 2 })).choose(ctx({ hashes: hashes(10) }), workers);
  t.equal(d.worker.id, 'idle');
  t.equal(d.explain['matchRate'], 0.3);
  d = events(fakeMatcher({ cached: 4, other: 2 })).choose(ctx({ hashes: hashes(10) }), workers);
  t.equal(d.worker.id, 'cached');
  t.equal(d.explain['matchRate'], 0.4);
  t.equal(d.predictedCachedBlocks, 4);
  // Partial last block: 4 blocks of 170 tokens = 64/170 ≈ 0.376.
  d = events(fakeMatcher({ cached: 4 })).choose(ctx({ promptTokens: 170, hashes: hashes(10) }), workers);
  t.ok(Math.abs((d.explain['matchRate'] as number) - 64 / 170) < 1e-12);
  // A different threshold.
  t.equal(
    events(fakeMatcher({ cached: 4 }), { cacheThreshold: 0.5 }).choose(ctx({ hashes: hashes(10) }), workers).worker.id,
    'idle',
  );
});

t.test('equally deep matches go to the last tenant routed to, not the less loaded one', async (t) => {
  const workers = [worker('a', { inflightRequests: 2 }), worker('b', { inflightRequests: 1 }), worker('c')];
  const last = events(fakeMatcher({ a: 6, b: 6 }));
  last.onRouted!(ctx({ hashes: hashes(10) }), { worker: workers[1]!, explain: {} });
  last.onRouted!(ctx({ hashes: hashes(10) }), { worker: workers[0]!, explain: {} });
  // `a` was routed to last: it takes the tie although `b` is less loaded.
  t.equal(last.choose(ctx({ hashes: hashes(10) }), workers).worker.id, 'a');
  // A deeper match still beats recency.
  t.equal(
    last.choose(ctx({ hashes: hashes(10) }), [...workers, worker('d')]).worker.id,
    'a',
    'c and d hold nothing, so they take no part',
  );
  const deeper = events(fakeMatcher({ a: 6, b: 7 }));
  deeper.onRouted!(ctx({ hashes: hashes(10) }), { worker: workers[0]!, explain: {} });
  t.equal(deeper.choose(ctx({ hashes: hashes(10) }), workers).worker.id, 'b');
});

t.test('equal depth and no routing history: at random', async (t) => {
  const s = events(fakeMatcher({ a: 6, b: 6 }));
  const random = seeded(4);
  const even = [worker('a'), worker('b'), worker('c')];
  const share = shares(2000, () => s.choose(ctx({ hashes: hashes(10), random }), even).worker.id);
  t.equal(share['c'], undefined);
  t.ok(Math.abs(share['a']! - 0.5) < 0.05, JSON.stringify(share));
});

t.test('approx source: the tree learns from every routing decision, balanced or not', async (t) => {
  const s = createSglangCacheAwareStrategy(sglangCacheAwareParamsSchema.parse({ balanceAbsThreshold: 4 }), deps());
  const prompt = hashes(10, 7n);
  // Imbalanced (8 − 0 > 4, 8 > 0): least loaded `c`, and the prompt is inserted for `c`.
  const skewed = [worker('a', { inflightRequests: 8 }), worker('b', { inflightRequests: 8 }), worker('c')];
  const first = s.choose(ctx({ hashes: prompt }), skewed);
  t.equal(first.worker.id, 'c');
  s.onRouted!(ctx({ hashes: prompt }), first);
  // Balanced now (c is a bit busier): the full match rate of 1 sends it back to `c`.
  const balanced = [
    worker('a', { inflightRequests: 1 }),
    worker('b', { inflightRequests: 1 }),
    worker('c', { inflightRequests: 3 }),
  ];
  const again = s.choose(ctx({ hashes: prompt }), balanced);
  t.equal(again.worker.id, 'c');
  t.equal(again.explain['matchRate'], 1);
  t.match(again.explain['index'], /approximate tree/);
  // An unrelated prompt has no match: least loaded (a or b).
  t.not(s.choose(ctx({ hashes: hashes(10, 8n) }), balanced).worker.id, 'c');
  // Without blocks: least loaded, and explain says why.
  const none = s.choose(ctx({ promptTokens: 300 }), balanced);
  t.not(none.worker.id, 'c');
  t.match(none.explain['index'], /no prompt blocks/);
});

t.test('approx entries expire after the TTL', async (t) => {
  let now = 0;
  const s = createSglangCacheAwareStrategy(
    sglangCacheAwareParamsSchema.parse({ ttlSeconds: 60 }),
    deps({ now: () => now }),
  );
  const prompt = hashes(10, 9n);
  const workers = [worker('a'), worker('b', { inflightRequests: 2 })];
  s.onRouted!(ctx({ hashes: prompt }), { worker: workers[1]!, explain: {} });
  now = 59_000;
  t.equal(s.choose(ctx({ hashes: prompt }), workers).worker.id, 'b');
  now = 60_001;
  t.equal(s.choose(ctx({ hashes: prompt }), workers).worker.id, 'a');
});
