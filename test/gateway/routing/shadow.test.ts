import t from 'tap';
import { z } from 'zod';
import { metricValue } from '../../fixtures/gateway.js';
import { seeded } from '../../fixtures/strategy-fleet.js';
import { registerStrategy } from '../../../gateway/routing/strategies/registry.js';
import type { WorkerLoad } from '../../../gateway/routing/strategies/strategy.js';
import { chat, route, setup } from '../../fixtures/policy-setup.js';

/** A strategy that always picks one worker and records what it saw; `onRouted` must never run for a shadow. */
const spy = { chose: [] as WorkerLoad[][], routed: 0 };
registerStrategy('spy-last', {
  params: z.strictObject({}),
  create: () => ({
    name: 'spy-last',
    choose: (_ctx, candidates) => {
      spy.chose.push(candidates.map((w) => ({ ...w.load })));
      return { worker: candidates[candidates.length - 1]!, explain: {} };
    },
    onRouted: () => {
      spy.routed++;
    },
  }),
});

const tick = () => new Promise((r) => setImmediate(r));

t.test('shadow strategies decide after the request, record agreement, and never send or take load', async (t) => {
  spy.chose.length = 0;
  spy.routed = 0;
  const s = setup(t.teardown.bind(t), {
    strategy: 'least-load',
    shadow: { sampleRate: 1, strategies: ['least-load', 'spy-last', { name: 'rr', strategy: 'round-robin' }] },
  });
  const r = await route(s, chat(100));
  t.equal(r.worker.id, 'w0', 'least-load picks the first idle worker');
  const ticket = s.fleet.start(r.worker, r.ctx.promptTokens, 10);
  const before = s.fleet.workers.map((w) => ({ ...w.load }));
  s.pipeline.shadow(r, ticket);
  t.equal(spy.chose.length, 0, 'nothing runs synchronously: the real request is never delayed');
  await tick();
  t.equal(spy.chose.length, 1);
  t.same(
    spy.chose[0]![0],
    { inflightRequests: 0, prefillRequests: 0, prefillTokens: 0, decodeRequests: 0, decodeBlocks: 0 },
    "shadows see the fleet as the real strategy did, without this request's own load",
  );
  t.same(
    s.fleet.workers.map((w) => ({ ...w.load })),
    before,
    'load is exactly as before',
  );
  t.equal(spy.routed, 0, 'onRouted is never called on a shadow');

  const text = await s.metrics.registry.metrics();
  t.equal(
    metricValue(text, 'kvgate_shadow_decisions_total', {
      strategy: 'least-load',
      shadow: 'least-load',
      agreed: 'true',
    }),
    1,
    'the same strategy agrees with itself',
  );
  t.equal(
    metricValue(text, 'kvgate_shadow_decisions_total', { strategy: 'least-load', shadow: 'spy-last', agreed: 'false' }),
    1,
  );
  t.equal(
    metricValue(text, 'kvgate_shadow_decisions_total', { strategy: 'least-load', shadow: 'rr', agreed: 'true' }),
    1,
    'round-robin starts at the first worker',
  );
  const summary = s.pipeline.summary() as { shadow: { shadow: string; decisions: number; agreement: number }[] };
  t.same(
    summary.shadow.map((x) => [x.shadow, x.decisions, x.agreement]),
    [
      ['least-load', 1, 1],
      ['spy-last', 1, 0],
      ['rr', 1, 1],
    ],
  );
});

t.test(
  'only a sample of requests get shadow decisions; predicted cached tokens are recorded when the prompt was hashed',
  async (t) => {
    spy.chose.length = 0;
    const s = setup(
      t.teardown.bind(t),
      { strategy: 'round-robin', shadow: { sampleRate: 0.25, strategies: ['spy-last'] } },
      { random: seeded(5) },
    );
    for (let i = 0; i < 400; i++) {
      const r = await route(s, chat());
      s.pipeline.shadow(r, s.fleet.start(r.worker, 1, 1));
    }
    await tick();
    t.ok(spy.chose.length > 60 && spy.chose.length < 140, `${spy.chose.length} of 400 sampled at 0.25`);

    const hashed = setup(
      t.teardown.bind(t),
      { strategy: 'round-robin', shadow: { sampleRate: 1, strategies: ['kv'] } },
      {
        promptBlocks: async () => ({ tokenCount: 64, blockSize: 16, hashes: [1n, 2n, 3n, 4n] }),
      },
    );
    const r = await route(hashed, chat());
    t.equal(r.ctx.blocks, undefined, 'round-robin did not need the prompt hashed');
    hashed.pipeline.shadow(r, hashed.fleet.start(r.worker, 1, 1));
    await new Promise((res) => setTimeout(res, 20));
    const text = await hashed.metrics.registry.metrics();
    t.equal(
      metricValue(text, 'kvgate_shadow_predicted_cached_tokens_count', { strategy: 'round-robin', shadow: 'kv' }),
      1,
      'the shadow hashed the prompt itself, off the request path',
    );
  },
);

t.test("an experiment's shadow replaces the global one for its requests", async (t) => {
  spy.chose.length = 0;
  const s = setup(t.teardown.bind(t), {
    shadow: { sampleRate: 1, strategies: ['least-load'] },
    experiments: [
      {
        name: 'ab',
        match: { headers: { 'x-ab': 'on' } },
        arms: [{ name: 'only', strategy: 'random' }],
        shadow: { sampleRate: 1, strategies: ['spy-last'] },
      },
    ],
  });
  const inExp = await route(s, chat(), { 'x-ab': 'on' });
  s.pipeline.shadow(inExp, s.fleet.start(inExp.worker, 1, 1));
  const outside = await route(s, chat());
  s.pipeline.shadow(outside, s.fleet.start(outside.worker, 1, 1));
  await tick();
  t.equal(spy.chose.length, 1);
  const text = await s.metrics.registry.metrics();
  t.equal(
    metricValue(text, 'kvgate_shadow_decisions_total', { strategy: 'random', shadow: 'spy-last' }) !== undefined,
    true,
  );
  t.equal(
    metricValue(text, 'kvgate_shadow_decisions_total', {
      strategy: 'least-load',
      shadow: 'least-load',
      agreed: 'true',
    }),
    1,
  );
});
