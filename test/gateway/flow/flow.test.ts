import { EventEmitter } from 'node:events';
import type { IncomingHttpHeaders } from 'node:http';
import pino from 'pino';
import { Registry } from 'prom-client';
import t from 'tap';
import { Worker } from '../../../gateway/fleet/fleet.js';
import { flowConfigSchema, type FlowConfig } from '../../../gateway/flow/config.js';
import { FlowControl, type FlowPass } from '../../../gateway/flow/flow.js';
import type { Routed } from '../../../gateway/routing/pipeline.js';
import type { Decision, Strategy, WorkerView } from '../../../gateway/routing/strategies/strategy.js';
import { GatewayError } from '../../../gateway/front/errors.js';

const BLOCK = 16;

function worker(id: string): Worker {
  const w = new Worker({ id, url: `http://127.0.0.1:1/${id}`, models: ['m'], role: 'both', labels: {} });
  w.healthy = true;
  return w;
}

/** Least queued prefill, with fixed cached blocks per worker reported as overlap terms (like `kv`). */
function strategy(cached: Record<string, number> = {}, pick?: string): Strategy {
  return {
    name: 'test',
    choose(_ctx, candidates: readonly WorkerView[]): Decision {
      let best = candidates[0]!;
      for (const c of candidates) if (c.load.prefillTokens < best.load.prefillTokens) best = c;
      if (pick) best = candidates.find((c) => c.id === pick) ?? best;
      return {
        worker: best,
        explain: {},
        predictedCachedBlocks: cached[best.id] ?? 0,
        candidates: candidates.map((c) => ({ worker: c.id, terms: { overlapBlocks: cached[c.id] ?? 0 } })),
      };
    },
  };
}

function routed(workers: Worker[], s: Strategy, promptTokens = 100, headers: IncomingHttpHeaders = {}): Routed {
  const ctx = {
    requestId: 'r',
    model: 'm',
    path: '/v1/completions',
    headers,
    sessionKey: undefined,
    promptTokens,
    blocks: undefined,
    random: Math.random,
    now: Date.now,
  };
  const decision = s.choose(ctx, workers);
  return {
    ctx,
    decision,
    strategy: s,
    worker: workers.find((w) => w.id === decision.worker.id)!,
    candidates: workers,
    selection: { strategy: s, arm: 'none', armStats: undefined, pool: undefined, shadow: undefined, rule: 'default' },
    request: {
      kind: 'completion',
      raw: Buffer.alloc(0),
      body: {},
      model: 'm',
      stream: true,
      estimatedPromptTokens: promptTokens,
      maxTokens: 8,
    },
  };
}

class FakeRes extends EventEmitter {
  status = 0;
  headers: Record<string, string> = {};
  body = '';
  headersSent = false;
  destroyed = false;
  writeHead(status: number, headers: Record<string, string>) {
    this.status = status;
    this.headers = headers;
    this.headersSent = true;
    return this;
  }
  end(body: string) {
    this.body = body;
  }
  get error(): { code: string; message: string; type: string } {
    return (JSON.parse(this.body) as { error: { code: string; message: string; type: string } }).error;
  }
}

function flow(
  t: { teardown(fn: () => unknown): void },
  input: Record<string, unknown>,
): { flow: FlowControl; config: FlowConfig } {
  const config = flowConfigSchema.parse({ enabled: true, pollMs: 5, ...input });
  const f = new FlowControl({ config, registry: new Registry(), log: pino({ level: 'silent' }), blockSize: BLOCK });
  t.teardown(() => f.close());
  return { flow: f, config };
}

const saturate = (w: Worker, tokens = 1000) => (w.localLoad.prefillTokens = tokens);

type Gate = FlowPass | null | Promise<FlowPass | null>;
const call = (f: FlowControl, r: Routed, headers: IncomingHttpHeaders = {}) => {
  const res = new FakeRes();
  const out: Gate = f.gate(r, headers, res, 'req');
  return { res, out };
};

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

t.test('under overload a new request does not join its saturated pick', async (t) => {
  const { flow: f } = flow(t, { saturation: { default: { prefillTokens: 1000 } }, affinityWaitMs: 10_000 });
  const [a, b] = [worker('a'), worker('b')];
  saturate(a);
  saturate(b);
  // Held, and waiting for a (its cache) even once b has room: the gateway is holding requests.
  const batch = call(f, routed([a, b], strategy({ a: 1000 }, 'a'), 20_000), { 'x-kvgate-priority': 'sheddable' }).out;
  t.ok(batch instanceof Promise);
  saturate(b, 0);
  // Joining a would queue the request inside its engine, first come, first served, where priority
  // no longer applies (issue 17: critical requests waited there behind standard ones).
  const critical = { 'x-kvgate-priority': 'critical' };
  const moved = call(f, routed([a, b], strategy({}, 'a')), critical).out as FlowPass;
  t.equal(moved.routed.worker.id, 'b', 'with nothing cached on a, it goes to the room on b at once');
  const held = call(f, routed([a, b], strategy({ a: 1000 }, 'a'), 20_000), critical).out;
  t.ok(
    held instanceof Promise,
    'one with most of its prompt cached on a waits in the gateway for a, b has room or not',
  );
  let batchDone = false;
  void (batch as Promise<FlowPass | null>).then(() => (batchDone = true));
  saturate(a, 0);
  f.kick();
  t.equal((await held)?.routed.worker.id, 'a', 'and goes there when it has room, before the sheddable one');
  t.notOk(batchDone, 'the sheddable request still waits');
  saturate(a, 0);
  f.kick();
  t.equal((await batch)?.routed.worker.id, 'a');
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

t.test("a held request waits a little for the strategy's favourite, then takes any room", async (t) => {
  const { flow: f } = flow(t, { saturation: { default: { prefillTokens: 1000 } }, affinityWaitMs: 150 });
  const [a, b] = [worker('a'), worker('b')];
  saturate(a);
  saturate(b);
  const started = Date.now();
  // 16k of the 20k prompt cached on a: a's queue (1000 tokens) costs far less than recomputing them on b.
  const { out } = call(f, routed([a, b], strategy({ a: 1000 }, 'a'), 20_000));
  saturate(b, 0);
  f.kick();
  const pass = await out;
  t.equal(pass?.routed.worker.id, 'b', 'released to the worker with room once the wait for the favourite ran out');
  t.ok(Date.now() - started >= 140, 'not before affinityWaitMs');
  const moved = (f.summary([a, b]) as { classes: { moved: { requests: number; lostBlocks: number } }[] }).classes[1]!;
  t.same(moved.moved, { requests: 1, lostBlocks: 1000 }, 'the move and the cache it gave up are counted');
});

t.test('the affinity wait starts when room appears elsewhere, not at arrival', async (t) => {
  const { flow: f } = flow(t, { saturation: { default: { prefillTokens: 1000 } }, affinityWaitMs: 150 });
  const [a, b] = [worker('a'), worker('b')];
  saturate(a);
  saturate(b);
  const { out } = call(f, routed([a, b], strategy({ a: 1000 }, 'a'), 20_000));
  // Longer than affinityWaitMs with every worker saturated: under overload this is every held request.
  await new Promise((r) => setTimeout(r, 200));
  saturate(b, 0);
  const roomAt = Date.now();
  f.kick();
  await new Promise((r) => setTimeout(r, 60));
  saturate(a, 0);
  f.kick();
  const pass = await out;
  t.equal(pass?.routed.worker.id, 'a', 'its pick opened within the wait, so it kept its cache');
  t.ok(Date.now() - roomAt < 140, 'released when the pick opened');
});

t.test('the wait for the cached worker ends once it is as long as the recomputation it saves', async (t) => {
  const { flow: f } = flow(t, { saturation: { default: { prefillTokens: 1000 } }, affinityWaitMs: 10_000 });
  const [a, b, c] = [worker('a'), worker('b'), worker('c')];
  for (const w of [a, b, c]) saturate(w);
  // Only the shared prefix: b holds as much of it as a, so moving loses nothing and happens at once.
  const shared = call(f, routed([a, b, c], strategy({ a: 4, b: 4 }, 'a'), 2000));
  // 30 blocks (480 tokens) cached on a only: ~48 ms to recompute at the initial 10k tokens/s.
  const own = call(f, routed([a, b, c], strategy({ a: 30 }, 'a'), 2000));
  const started = Date.now();
  saturate(b, 0);
  f.kick();
  const first = await shared.out;
  t.equal(first?.routed.worker.id, 'b', 'a move that loses no cached block is made at once');
  saturate(b);
  saturate(c, 0);
  f.kick();
  const second = await own.out;
  t.equal(second?.routed.worker.id, 'c', 'the prefix is recomputed where there is room');
  const waited = Date.now() - started;
  t.ok(waited >= 40 && waited < 1000, `waited ${waited} ms: about the recomputation, far below affinityWaitMs`);
  const moved = (f.summary([a, b, c]) as { classes: { moved: { requests: number; lostBlocks: number } }[] })
    .classes[1]!;
  t.same(moved.moved, { requests: 2, lostBlocks: 30 });
});

t.test('while its own class takes the room, a request waits for its cached worker', async (t) => {
  const { flow: f } = flow(t, { saturation: { default: { prefillTokens: 1000 } }, affinityWaitMs: 10_000 });
  const [a, b] = [worker('a'), worker('b')];
  saturate(a);
  saturate(b);
  // 30 blocks (480 tokens) cached on a: ~48 ms to recompute, far less than it will wait.
  const sticky = call(f, routed([a, b], strategy({ a: 30 }, 'a'), 2000)).out;
  const loose: Gate[] = [];
  for (let i = 0; i < 4; i++)
    loose.push(call(f, routed([a, b], strategy({}, 'a'), 2000), { 'x-kvgate-tenant': `t${i}` }).out);
  let stickyAt = '';
  void (sticky as Promise<FlowPass | null>).then((p) => (stickyAt = p?.routed.worker.id ?? ''));
  // b gets room four times, 30 ms apart: each time a request with nothing cached takes it,
  // and the one with its prefix on a keeps waiting.
  for (const l of loose) {
    saturate(b, 0);
    f.kick();
    t.equal((await l)?.routed.worker.id, 'b');
    saturate(b);
    await new Promise((r) => setTimeout(r, 30));
  }
  t.equal(stickyAt, '', 'still waiting for a');
  saturate(a, 0);
  f.kick();
  t.equal((await sticky)?.routed.worker.id, 'a', 'and a gets it, cache and all');
});

t.test('room a lower class would get: the wait for the cached worker ends after the recomputation', async (t) => {
  const { flow: f } = flow(t, { saturation: { default: { prefillTokens: 1000 } }, affinityWaitMs: 10_000 });
  const [a, b] = [worker('a'), worker('b')];
  saturate(a);
  saturate(b);
  // 30 blocks (480 tokens) cached on a: ~48 ms to recompute at the initial 10k tokens/s.
  const critical = call(f, routed([a, b], strategy({ a: 30 }, 'a'), 2000), { 'x-kvgate-priority': 'critical' }).out;
  const batch: Gate[] = [];
  for (let i = 0; i < 8; i++)
    batch.push(call(f, routed([a, b], strategy({}, 'a'), 2000), { 'x-kvgate-priority': 'sheddable' }).out);
  let released = 0;
  for (const l of batch)
    void Promise.resolve(l).then(() => {
      released++;
      saturate(b); // the released request takes the room, as fleet.start would
    });
  const started = Date.now();
  let movedAt = 0;
  let releasedBefore = 0;
  void (critical as Promise<FlowPass | null>).then((p) => {
    if (p?.routed.worker.id !== 'b') return;
    movedAt = Date.now();
    releasedBefore = released;
    saturate(b);
  });
  for (let i = 0; i < 8 && !movedAt; i++) {
    saturate(b, 0);
    f.kick();
    await new Promise((r) => setTimeout(r, 30));
  }
  t.ok(movedAt > 0, 'the critical request took room on b');
  t.ok(releasedBefore < 8, `while sheddable requests still wanted it (${releasedBefore} of 8 released)`);
  t.ok(movedAt - started >= 40, `after ${movedAt - started} ms: about the recomputation`);
});
