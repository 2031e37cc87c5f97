import type { IncomingHttpHeaders } from 'node:http';
import t from 'tap';
import type { FlowControl, FlowPass } from '../../../gateway/flow/flow.js';
import type { Worker } from '../../../gateway/fleet/fleet.js';
import { GatewayError } from '../../../gateway/front/errors.js';
import { call, flow, routed, saturate, strategy, worker } from '../../fixtures/flow.js';

t.test('unsaturated: the strategy pick goes straight through, synchronously', async (t) => {
  const { flow: f } = flow(t, { saturation: { default: { prefillTokens: 1000 } } });
  const [a, b] = [worker('a'), worker('b')];
  saturate(a, 500);
  const { out } = call(f, routed([a, b], strategy({}, 'a')));
  t.notOk(out instanceof Promise, 'no promise on the fast path');
  t.equal((out as FlowPass).routed.worker.id, 'a', "the strategy's pick stands while it has room");
  saturate(a);
  const kept = call(f, routed([a, b], strategy({}, 'a'))).out as FlowPass;
  t.equal(kept.routed.worker.id, 'a', 'while another worker has room, nothing is held and the pick stands');
});

t.test('all saturated: held, then released to the worker the strategy picks at release time', async (t) => {
  const { flow: f } = flow(t, { saturation: { default: { prefillTokens: 1000 } } });
  const [a, b] = [worker('a'), worker('b')];
  saturate(a);
  saturate(b);
  const { out } = call(f, routed([a, b], strategy()));
  t.ok(out instanceof Promise, 'held');
  let settled = false;
  void (out as Promise<FlowPass | null>).then(() => (settled = true));
  await new Promise((r) => setTimeout(r, 30));
  t.notOk(settled, 'still held while every candidate is saturated');
  saturate(b, 10);
  f.kick();
  const pass = await out;
  t.equal(pass?.routed.worker.id, 'b', 'released to the worker with room');
});

/** Saturates every worker, queues the given requests, then frees one slot at a time and records the release order. */
async function releaseOrder(
  f: FlowControl,
  workers: Worker[],
  requests: { name: string; headers: IncomingHttpHeaders; deadline?: number }[],
): Promise<string[]> {
  for (const w of workers) saturate(w);
  const order: string[] = [];
  const pending = requests.map(({ name, headers }) => {
    const { out } = call(f, routed(workers, strategy(), 100, headers), headers);
    return Promise.resolve(out).then((p) => {
      if (p) order.push(name);
      // The released request takes the room it found, as fleet.start would.
      saturate(workers[0]!);
    });
  });
  for (let i = 0; i < requests.length; i++) {
    saturate(workers[0]!, 0);
    f.kick();
    await new Promise((r) => setTimeout(r, 15));
  }
  await Promise.all(pending);
  return order;
}

t.test('release order: class first, then tenants in turn, then deadline', async (t) => {
  const { flow: f } = flow(t, { saturation: { default: { prefillTokens: 1000 } } });
  const w = [worker('a')];
  const order = await releaseOrder(f, w, [
    { name: 'shed-1', headers: { 'x-kvgate-priority': 'sheddable' } },
    { name: 'std-1', headers: {} },
    { name: 'crit-1', headers: { 'x-kvgate-priority': 'critical' } },
    { name: 'std-2', headers: { 'x-kvgate-priority': 'standard' } },
  ]);
  t.same(order, ['crit-1', 'std-1', 'std-2', 'shed-1']);

  const noisy = Array.from({ length: 6 }, (_, i) => ({ name: `noisy-${i}`, headers: { 'x-kvgate-tenant': 'noisy' } }));
  const fair = await releaseOrder(f, w, [
    ...noisy,
    { name: 'quiet-0', headers: { 'x-kvgate-tenant': 'quiet' } },
    { name: 'quiet-1', headers: { 'x-kvgate-tenant': 'quiet' } },
  ]);
  t.ok(fair.indexOf('quiet-1') <= 3, `the quiet tenant is not stuck behind the noisy one: ${fair.join(' ')}`);

  const dl = await releaseOrder(f, w, [
    { name: 'no-deadline', headers: { 'x-kvgate-tenant': 't' } },
    { name: 'deadline-5s', headers: { 'x-kvgate-tenant': 't', 'x-kvgate-deadline-ms': '5000' } },
    { name: 'deadline-1s', headers: { 'x-kvgate-tenant': 't', 'x-kvgate-deadline-ms': '1000' } },
  ]);
  t.same(dl, ['deadline-1s', 'deadline-5s', 'no-deadline']);
});

t.test('TTL: a request that waited too long gets 429 with retry-after and the reason', async (t) => {
  const { flow: f } = flow(t, {
    saturation: { default: { prefillTokens: 1000 } },
    classes: [{ name: 'standard', ttlMs: 60 }],
    retryAfterSeconds: 3,
  });
  const a = worker('a');
  saturate(a);
  const { res, out } = call(f, routed([a], strategy()));
  t.equal(await out, null);
  t.equal(res.status, 429);
  t.equal(res.headers['retry-after'], '3');
  t.equal(res.error.code, 'ttl_expired');
  t.equal(res.error.type, 'rate_limit_error');
  t.match(res.error.message, /waited 60 ms .*priority class 'standard'/);
  const summary = f.summary([a]) as { classes: { shed: Record<string, number>; queued: number }[] };
  t.equal(summary.classes[0]!.shed.ttl_expired, 1);
  t.equal(summary.classes[0]!.queued, 0);
});

t.test('a client that disconnects while queued is removed at once', async (t) => {
  const { flow: f } = flow(t, { saturation: { default: { prefillTokens: 1000 } } });
  const a = worker('a');
  saturate(a);
  const { res, out } = call(f, routed([a], strategy()), { 'x-kvgate-tenant': 'gone' });
  const before = f.summary([a]) as { queued: number; classes: { tenants: Record<string, number> }[] };
  t.equal(before.queued, 1);
  t.same(before.classes[1]!.tenants, { gone: 1 }, 'queue depth per class and tenant');
  res.emit('close');
  t.equal(await out, null);
  t.equal(res.status, 0, 'nothing written to a gone client');
  const after = f.summary([a]) as { queued: number; classes: { shed: Record<string, number> }[] };
  t.equal(after.queued, 0);
  t.equal(after.classes[1]!.shed.disconnected, 1);
});

t.test('bounds: a full class queue sheds the arrival; a full gateway sheds the oldest lower sheddable', async (t) => {
  const { flow: f } = flow(t, {
    saturation: { default: { prefillTokens: 1000 } },
    maxQueued: 2,
    classes: [{ name: 'critical', maxQueued: 1 }, { name: 'standard' }, { name: 'sheddable', sheddable: true }],
  });
  const a = worker('a');
  saturate(a);
  const r = () => routed([a], strategy());
  const s1 = call(f, r(), { 'x-kvgate-priority': 'sheddable' });
  const s2 = call(f, r(), { 'x-kvgate-priority': 'sheddable' });
  const c1 = call(f, r(), { 'x-kvgate-priority': 'critical' });
  t.equal(await s1.out, null, 'the oldest sheddable request made room');
  t.equal(s1.res.status, 429);
  t.equal(s1.res.error.code, 'preempted');
  const c2 = call(f, r(), { 'x-kvgate-priority': 'critical' });
  t.equal(await c2.out, null);
  t.equal(c2.res.error.code, 'queue_full', "critical's own bound of 1 is reached");
  const std = call(f, r());
  t.equal(await s2.out, null, 'a standard arrival to the full gateway sheds the last sheddable one');
  t.equal(s2.res.error.code, 'preempted');
  const std2 = call(f, r());
  t.equal(await std2.out, null);
  t.equal(std2.res.error.code, 'queue_full', 'a full gateway with nothing sheddable below sheds the arrival');
  saturate(a, 0);
  f.kick();
  t.ok(await c1.out, 'the critical request is released');
  t.ok(await std.out, 'then the standard one');
});

t.test('SLO: a pick predicted to miss the TTFT target gives way to the best-cached worker that meets it', async (t) => {
  const { flow: f } = flow(t, {
    saturation: { default: { prefillTokens: 100_000 } },
    prediction: { initialTokensPerSecond: 10_000, initialOverheadMs: 20 },
    classes: [
      { name: 'standard', ttftMs: 500 },
      { name: 'strict', ttftMs: 10, onSloMiss: 'shed' },
    ],
  });
  const [a, b, c] = [worker('a'), worker('b'), worker('c')];
  saturate(a, 20_000); // 1600 cached, 400 to prefill, behind 20k: ~2 s
  saturate(c, 500); // 800 cached, 1200 to prefill behind 500: ~190 ms
  const s = strategy({ a: 100, c: 50 }, 'a');
  const pass = call(f, routed([a, b, c], s, 2000)).out as FlowPass;
  t.equal(pass.routed.worker.id, 'c', 'c meets 500 ms and holds more of the prompt than b');
  t.equal(pass.routed.decision.predictedCachedBlocks, 50);
  t.match(pass.routed.decision.explain.flow, /TTFT budget/);

  const loose = call(f, routed([a, b, c], s, 2000), { 'x-kvgate-ttft-ms': '3000' }).out as FlowPass;
  t.equal(loose.routed.worker.id, 'a', "a header target the strategy's pick meets keeps it");

  const shed = call(f, routed([a, b, c], s, 2000), { 'x-kvgate-priority': 'strict' });
  t.equal(shed.out, null, 'no worker can meet 10 ms: the class sheds');
  t.equal(shed.res.error.code, 'slo_unattainable');
  t.match(shed.res.error.message, /10 ms time-to-first-token target \(best prediction \d+ ms\)/);

  const explained = f.explain(routed([a, b, c], s, 2000), {}) as {
    candidates: { worker: string; predictedTtftMs: number }[];
  };
  t.same(
    explained.candidates.map((x) => [x.worker, x.predictedTtftMs]),
    [
      ['a', 2060],
      ['b', 220],
      ['c', 190],
    ],
    'predicted TTFT per candidate',
  );
});

t.test('the TTFT model learns speed and overhead from observations', async (t) => {
  const { flow: f } = flow(t, {});
  const a = worker('a');
  // A worker doing 5,000 tokens/s with 50 ms of fixed cost.
  for (let i = 0; i < 40; i++) {
    const tokens = 200 + ((i * 7919) % 4000);
    f.model.observe('a', tokens, 0.05 + tokens / 5000);
  }
  t.ok(Math.abs(f.model.tokensPerSecond('a') - 5000) < 100, `speed ${f.model.tokensPerSecond('a')}`);
  t.ok(Math.abs(f.model.predictMs(a, 3000) - 650) < 15, `predicted ${f.model.predictMs(a, 3000)} ms`);
  t.equal(Math.round(f.model.prefillCapacity('a') / 100), 100, 'learned capacity = speed x prefillQueueMs (2 s)');
});

t.test('bad flow headers are 400s naming the header', async (t) => {
  const { flow: f } = flow(t, {});
  const a = worker('a');
  let caught: unknown;
  try {
    call(f, routed([a], strategy()), { 'x-kvgate-priority': 'urgent' });
  } catch (e) {
    caught = e;
  }
  t.ok(caught instanceof GatewayError);
  const e = caught as GatewayError;
  t.equal(e.status, 400);
  t.equal(e.param, 'x-kvgate-priority');
  t.match(e.message, /unknown priority class 'urgent' \(classes: critical, standard, sheddable\)/);
  t.throws(
    () => call(f, routed([a], strategy()), { 'x-kvgate-ttft-ms': 'soon' }),
    /x-kvgate-ttft-ms must be a positive whole number of milliseconds/,
  );
});

t.test('fleet fairness: a tenant over its share goes after every other tenant, whatever the class', async (t) => {
  const config = { saturation: { default: { prefillTokens: 1000 } } };
  const use = async (f: FlowControl, w: Worker[]) => {
    // While the worker has room, the noisy tenant sends 9 large prompts and the quiet one 1 small one.
    saturate(w[0]!, 0);
    const send = (tenant: string, tokens: number) =>
      call(f, routed(w, strategy(), tokens, { 'x-kvgate-tenant': tenant }), { 'x-kvgate-tenant': tenant });
    for (let i = 0; i < 9; i++) send('noisy', 5000);
    send('quiet', 500);
  };
  const queue = [
    { name: 'noisy-critical', headers: { 'x-kvgate-tenant': 'noisy', 'x-kvgate-priority': 'critical' } },
    { name: 'quiet-sheddable', headers: { 'x-kvgate-tenant': 'quiet', 'x-kvgate-priority': 'sheddable' } },
    { name: 'quiet-standard', headers: { 'x-kvgate-tenant': 'quiet', 'x-kvgate-priority': 'standard' } },
    { name: 'noisy-standard', headers: { 'x-kvgate-tenant': 'noisy', 'x-kvgate-priority': 'standard' } },
  ];

  const byClass = flow(t, config).flow;
  const w1 = [worker('a')];
  await use(byClass, w1);
  t.same(
    await releaseOrder(byClass, w1, queue),
    ['noisy-critical', 'quiet-standard', 'noisy-standard', 'quiet-sheddable'],
    'fairness: class (the default): classes strictly in order',
  );

  const { flow: fleet, registry } = flow(t, { ...config, tenants: { fairness: 'fleet' } });
  const w2 = [worker('a')];
  await use(fleet, w2);
  const metrics = await registry.metrics();
  t.match(metrics, /kvgate_flow_tenant_use_share\{tenant="noisy"\} 0\.98/, 'the use share is exported per tenant');
  t.match(metrics, /kvgate_flow_tenants_over_share 1\b/, 'and how many are over their share');
  const summary = fleet.summary(w2) as { fairness: string; tenants: { tenant: string; overShare: boolean }[] };
  t.equal(summary.fairness, 'fleet');
  t.match(summary.tenants, [
    { tenant: 'noisy', overShare: true },
    { tenant: 'quiet', overShare: false },
  ]);
  t.same(
    await releaseOrder(fleet, w2, queue),
    ['quiet-standard', 'quiet-sheddable', 'noisy-critical', 'noisy-standard'],
    'fairness: fleet: the tenant within its share first, each tenant in class order',
  );
});

t.test('fleet fairness: an over-share newcomer waits behind a lower class of a tenant within its share', async (t) => {
  const { flow: f } = flow(t, { saturation: { default: { prefillTokens: 1000 } }, tenants: { fairness: 'fleet' } });
  const [a, b] = [worker('a'), worker('b')];
  const send = (tenant: string, tokens: number) =>
    call(f, routed([a, b], strategy(), tokens, { 'x-kvgate-tenant': tenant }), { 'x-kvgate-tenant': tenant });
  for (let i = 0; i < 5; i++) send('noisy', 5000);
  send('quiet', 500);
  saturate(a);
  saturate(b);
  const quietHeaders = { 'x-kvgate-tenant': 'quiet', 'x-kvgate-priority': 'sheddable' };
  const quiet = call(f, routed([a, b], strategy(), 100, quietHeaders), quietHeaders).out;
  t.ok(quiet instanceof Promise, 'the quiet sheddable request is held');
  // Room appears on b; the noisy critical newcomer must not take it ahead of the held quiet request.
  saturate(b, 0);
  const noisyHeaders = { 'x-kvgate-tenant': 'noisy', 'x-kvgate-priority': 'critical' };
  const noisy = call(f, routed([a, b], strategy(), 100, noisyHeaders), noisyHeaders).out;
  t.ok(noisy instanceof Promise, 'the noisy critical newcomer joins the queue');
  const first = await Promise.race([
    Promise.resolve(quiet).then(() => 'quiet'),
    Promise.resolve(noisy).then(() => 'noisy'),
  ]);
  t.equal(first, 'quiet');
  saturate(b, 0);
  f.kick();
  t.ok(await noisy, 'then the noisy one goes');
});

t.test('saturation counts what is left to prefill: a cached follow-up queues its uncached part', async (t) => {
  const { flow: f } = flow(t, { saturation: { default: { prefillTokens: 1000 } } });
  const [a, b] = [worker('a'), worker('b')];
  // In prefill on a: a 28,000-token follow-up with all but 700 tokens cached, as fleet.start records it.
  a.active.start(28_000, 0, { uncachedTokens: 700 });
  saturate(a, 28_000);
  saturate(b);
  const pass = call(f, routed([a, b], strategy({}, 'a'))).out;
  t.notOk(pass instanceof Promise, 'a has room: 700 queued against 1,000');
  t.equal((pass as FlowPass).routed.worker.id, 'a');
  t.ok(f.model.predictMs(a, 0) < f.model.predictMs(b, 0), 'and is predicted faster than b with 1,000 queued');
  const view = f.summary([a, b]) as { workers: { id: string; prefillTokens: number; promptTokensInPrefill: number }[] };
  t.match(view.workers[0], { id: 'a', promptTokensInPrefill: 28_000 });
  // At most 700: the estimated progress on it (busy time x the learned speed) comes off.
  t.ok(view.workers[0]!.prefillTokens <= 700, `${view.workers[0]!.prefillTokens} left to prefill`);
  // Another replica's share (in `load` beyond this replica's prompts) counts whole: it publishes no more.
  a.load.prefillTokens += 500;
  const queued = f.model.queuedPrefill(a);
  t.ok(queued >= 500 && queued <= 1200, `local uncached (700 less progress) + remote 500: ${queued}`);
});
