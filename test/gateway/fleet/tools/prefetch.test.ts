import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import pino from 'pino';
import { Registry } from 'prom-client';
import t from 'tap';
import { toolRetentionConfigSchema } from '../../../../gateway/fleet/tools/config.js';
import type { Timers } from '../../../../gateway/fleet/tools/prefetch.js';
import { type KvRetainer, warmUp } from '../../../../gateway/fleet/tools/retainer.js';
import { ToolSessions } from '../../../../gateway/fleet/tools/tool-sessions.js';

const log = pino({ level: 'silent' });
const worker = { id: 'w1', url: 'http://w1' };
const body = {
  messages: [
    { role: 'system', content: 's' },
    { role: 'user', content: 'u' },
  ],
  stream: true,
  max_tokens: 64,
};
const TOOL_SSE = Buffer.from(
  'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"search","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}\n\n',
);

/** Timers fired by hand: `due` lists what is scheduled, in order. */
function fakeTimers() {
  const due: { fn: () => void; ms: number; cleared: boolean }[] = [];
  const timers: Timers = {
    set: (fn, ms) => (due.push({ fn, ms, cleared: false }), due.length - 1),
    clear: (h) => void (due[h as number]!.cleared = true),
  };
  return { timers, due };
}

function setup(prefetch: Record<string, unknown>, impl: KvRetainer['prefetch']) {
  let clock = 0;
  const calls: unknown[] = [];
  const registry = new Registry();
  const { timers, due } = fakeTimers();
  const retainer: KvRetainer = {
    name: 'none',
    retain: () => Promise.resolve(0),
    prefetch: (w, r, c) => (calls.push(r.body), impl!(w, r, c)),
  };
  const s = new ToolSessions({
    config: toolRetentionConfigSchema.parse({ enabled: true, minSamples: 3, prefetch: { enabled: true, ...prefetch } }),
    retainer,
    registry,
    log,
    now: () => clock,
    timers,
  });
  const toolCall = (session: string) => {
    const o = s.observe({ data: () => {}, end: () => {} }, session, worker, 'm', body);
    o.data(TOOL_SSE);
    o.end(200);
  };
  /** Teaches the tool a 2 s return delay (three returns), firing nothing. */
  const learn = () => {
    for (let i = 0; i < 3; i++) {
      toolCall('h:learn');
      clock += 2000;
      s.returned('h:learn', 'kept');
    }
  };
  const metric = async (outcome: string) => {
    const m = (await registry.getSingleMetric('kvgate_tool_prefetches_total')!.get()).values;
    return m.find((v) => v.labels.outcome === outcome)?.value ?? 0;
  };
  return { s, due, calls, learn, toolCall, metric, tick: (ms: number) => (clock += ms) };
}

const ok = () => Promise.resolve({ promptTokens: 100, cachedTokens: 96 });
const settle = () => new Promise((r) => setImmediate(r));

t.test('planned from the learned quantile minus the lead, sent once, its outcome visible', async (t) => {
  const { s, due, calls, learn, toolCall, metric, tick } = setup({ quantile: 0.1, leadMs: 300 }, ok);
  toolCall('h:a');
  t.equal(s.affinity('h:a')!.prefetch, null, 'nothing planned before the tool has minSamples');
  t.equal(due.length, 0);
  learn();
  toolCall('h:b');
  t.equal(due.length, 1);
  const planned = s.affinity('h:b')!.prefetch!;
  t.equal(planned.outcome, 'planned');
  t.equal(planned.plannedAtMs, Math.round(due[0]!.ms));
  t.ok(Math.abs(due[0]!.ms - 1700) <= 0.13 * 2000, `due at ${due[0]!.ms} ms ≈ 2000 - 300`);
  t.equal(s.affinity('h:b')!.prefetch!.plannedAtMs, planned.plannedAtMs, 'looking does not plan again');
  t.equal(due.length, 1);
  tick(due[0]!.ms);
  due[0]!.fn();
  due[0]!.fn();
  await settle();
  t.equal(calls.length, 1, 'one warm-up per pending session');
  t.same(calls[0], body, 'with the tool-call turn itself (the retainer shapes it)');
  const done = s.affinity('h:b')!.prefetch!;
  t.equal(done.outcome, 'ok');
  t.equal(done.sentAtMs, Math.round(due[0]!.ms));
  t.equal(done.cachedTokens, 96);
  t.equal(await metric('ok'), 1);
  const summary = s.summary() as any;
  t.same(summary.prefetch.outcomes, { ok: 1 });
  t.equal(summary.tools.search.prefetchAtMs, planned.plannedAtMs);
});

t.test('a follow-up before the warm-up cancels it; a new tool call replaces the plan', async (t) => {
  const { s, due, calls, learn, toolCall, metric } = setup({}, ok);
  learn();
  toolCall('h:a');
  s.returned('h:a', 'kept');
  t.equal(due[0]!.cleared, true);
  due[0]!.fn();
  await settle();
  t.equal(calls.length, 0, 'no warm-up after the follow-up');
  t.equal(await metric('cancelled'), 1);
  toolCall('h:b');
  toolCall('h:b');
  t.equal(due[1]!.cleared, true, 'the replaced plan is dropped');
  t.equal(await metric('forgotten'), 1);
  due[2]!.fn();
  await settle();
  t.equal(calls.length, 1);
});

t.test('at most maxConcurrent warm-ups run; one due beyond that is skipped', async (t) => {
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const { s, due, calls, learn, toolCall, metric } = setup({ maxConcurrent: 1 }, () =>
    held.then(() => ({ promptTokens: 1, cachedTokens: 0 })),
  );
  learn();
  toolCall('h:a');
  toolCall('h:b');
  due[0]!.fn();
  due[1]!.fn();
  t.equal(calls.length, 1);
  t.equal(s.affinity('h:b')!.prefetch!.outcome, 'busy');
  t.equal(s.affinity('h:a')!.prefetch!.outcome, 'sent');
  t.equal(await metric('busy'), 1);
  release();
  await settle();
  t.equal(s.affinity('h:a')!.prefetch!.outcome, 'ok');
  toolCall('h:c');
  due[2]!.fn();
  t.equal(calls.length, 2, 'the slot is free again');
});

t.test('a failing worker costs a metric, nothing else', async (t) => {
  const { s, due, learn, toolCall, metric } = setup({}, () => Promise.reject(new Error('connection refused')));
  learn();
  toolCall('h:a');
  due[0]!.fn();
  await settle();
  t.equal(s.affinity('h:a')!.prefetch!.outcome, 'error');
  t.equal(s.affinity('h:a')!.worker, 'w1', 'the affinity stands');
  t.equal(await metric('error'), 1);
  s.returned('h:a', 'kept');
  t.equal(s.affinity('h:a'), undefined);
});

t.test('off by default: no plan, no timer', async (t) => {
  const { s, due, learn, toolCall } = setup({ enabled: false }, ok);
  learn();
  toolCall('h:a');
  t.equal(due.length, 0);
  t.equal(s.affinity('h:a')!.prefetch, null);
  t.equal((s.summary() as any).prefetch.enabled, false);
});

t.test('the warm-up is the same prompt, non-streamed, one token; an engine error rejects', async (t) => {
  const seen: { headers: Record<string, unknown>; body: any }[] = [];
  let status = 200;
  const server = createServer((req, res) => {
    let raw = '';
    req.on('data', (c: Buffer) => (raw += c.toString()));
    req.on('end', () => {
      seen.push({ headers: req.headers, body: JSON.parse(raw) });
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ usage: { prompt_tokens: 40, prompt_tokens_details: { cached_tokens: 32 } } }));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => server.close());
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const tools = [{ type: 'function', function: { name: 'search' } }];
  const r = await warmUp({ id: 'w', url }, { model: 'm', body: { ...body, tools, n: 2 } }, { timeoutMs: 2000 });
  t.same(r, { promptTokens: 40, cachedTokens: 32 });
  t.same(seen[0]!.body, { model: 'm', max_tokens: 1, messages: body.messages, tools });
  t.equal(seen[0]!.headers['x-kvgate-prefetch'], '1');
  t.equal(seen[0]!.headers['x-data-parallel-rank'], undefined);
  await warmUp({ id: 'w', url, dataParallelRank: 3 }, { model: 'm', body }, { timeoutMs: 2000, priority: 10 });
  t.equal(seen[1]!.body.priority, 10);
  t.equal(seen[1]!.headers['x-data-parallel-rank'], '3', 'to the rank that served the turn');
  status = 503;
  await t.rejects(warmUp({ id: 'w', url }, { model: 'm', body }, { timeoutMs: 2000 }), /503/);
});
