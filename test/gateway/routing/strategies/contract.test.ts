import t, { type Test } from 'tap';
import {
  createStrategy,
  parseStrategyParams,
  strategyNames,
  StrategyConfigError,
} from '../../../../gateway/routing/strategies/registry.js';
import type { Decision } from '../../../../gateway/routing/strategies/strategy.js';
import { ctx, deps, fakeMatcher, hashes, seeded, worker } from '../../../fixtures/strategy-fleet.js';

/** Every registered strategy, run through the same contract (the Hono pattern). */

const KV_STRATEGIES = ['kv', 'approx-prefix', 'dynamo', 'sglang-cache-aware', 'llmd-precise'];

const fleet = () => [
  worker('w1', { inflightRequests: 2, prefillRequests: 1, prefillTokens: 300, decodeRequests: 1, decodeBlocks: 12 }),
  worker('w2'),
  worker('w3', { inflightRequests: 1, decodeRequests: 1, decodeBlocks: 40 }),
];

function checkDecision(t: Test, name: string, d: Decision, ids: string[]): void {
  t.ok(ids.includes(d.worker.id), `${name} chose a candidate (${d.worker.id})`);
  const json = JSON.stringify(d.explain);
  t.same(JSON.parse(json), d.explain, `${name}: explain survives JSON`);
  t.notMatch(json, /null/, `${name}: no NaN/Infinity/undefined turned null`);
  if (d.predictedCachedBlocks !== undefined)
    t.ok(Number.isFinite(d.predictedCachedBlocks) && d.predictedCachedBlocks >= 0);
  if (d.dataParallelRank !== undefined) t.ok(Number.isInteger(d.dataParallelRank));
  if (d.candidates) {
    for (const c of d.candidates) {
      t.ok(ids.includes(c.worker), `${name}: candidate ${c.worker} is in the list`);
      for (const v of Object.values(c.terms)) t.ok(Number.isFinite(v), `${name}: finite term`);
    }
  }
}

t.test('the KV strategies are registered', async (t) => {
  for (const name of KV_STRATEGIES) t.ok(strategyNames().includes(name), name);
});

for (const name of strategyNames()) {
  t.test(`${name}: returns a candidate and a JSON explain, with and without blocks`, async (t) => {
    const index = fakeMatcher({ w1: 6, 'w3#1': 3 }, { w1: 100, 'w3#1': 50 });
    const s = createStrategy(name, {}, deps({ index, workers: fleet() }));
    t.equal(s.name, name, 'name = registry key');
    const random = seeded(2);
    for (const workers of [fleet(), [worker('solo')]]) {
      const ids = workers.map((w) => w.id);
      for (const c of [
        ctx({ hashes: hashes(8), random }),
        ctx({ promptTokens: 200, random }),
        ctx({ hashes: [], promptTokens: 5, random }),
      ]) {
        for (let i = 0; i < 5; i++) {
          const d = s.choose(c, workers);
          checkDecision(t, name, d, ids);
          s.onRouted?.(c, d);
        }
      }
    }
    const bare = createStrategy(name, {}, deps());
    checkDecision(t, `${name} without an index`, bare.choose(ctx({ hashes: hashes(8) }), fleet()), ['w1', 'w2', 'w3']);
  });

  t.test(`${name}: params are strict, with defaults`, async (t) => {
    t.type(parseStrategyParams(name, undefined), 'object');
    t.throws(() => parseStrategyParams(name, { noSuchParam: 1 }), StrategyConfigError);
  });
}
