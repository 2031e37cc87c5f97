import pino from 'pino';
import { Registry } from 'prom-client';
import t from 'tap';
import { toolRetentionConfigSchema } from '../../../../gateway/fleet/tools/config.js';
import { ToolLatency } from '../../../../gateway/fleet/tools/latency.js';
import type { KvRetainer } from '../../../../gateway/fleet/tools/retainer.js';
import { ToolCallSniffer } from '../../../../gateway/fleet/tools/sniffer.js';
import { isToolFollowUp, sessionKeyOf, ToolSessions } from '../../../../gateway/fleet/tools/tool-sessions.js';

const log = pino({ level: 'silent' });
const worker = { id: 'w1', url: 'http://w1' };
const body = {
  messages: [
    { role: 'system', content: 's' },
    { role: 'user', content: 'u' },
  ],
};
const sink = { data: () => {}, end: () => {} };
const TOOL_SSE = Buffer.from(
  'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"search","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}\n\n',
);

function sessions(over: Record<string, unknown> = {}, retainer?: KvRetainer) {
  let clock = 0;
  const s = new ToolSessions({
    config: toolRetentionConfigSchema.parse({ enabled: true, ...over }),
    retainer: retainer ?? { name: 'none', retain: () => Promise.resolve(0) },
    registry: new Registry(),
    log,
    now: () => clock,
  });
  return { s, tick: (ms: number) => (clock += ms) };
}

/** Ends one response through the observer, split into 7-byte chunks (patterns straddle chunk boundaries). */
function respond(s: ToolSessions, session: string, payload: Buffer, status = 200) {
  const o = s.observe(sink, session, worker, 'm', body);
  for (let i = 0; i < payload.length; i += 7) o.data(payload.subarray(i, i + 7));
  o.end(status);
}

t.test('the sniffer finds tool calls and names across chunk boundaries, and not in generated text', async (t) => {
  const s = new ToolCallSniffer();
  for (let i = 0; i < TOOL_SSE.length; i += 5) s.scan(TOOL_SSE.subarray(i, i + 5));
  t.equal(s.toolCalls, true);
  t.same(s.names, ['search']);
  const text = new ToolCallSniffer();
  text.scan(
    Buffer.from(
      '{"choices":[{"message":{"content":"say \\"finish_reason\\":\\"tool_calls\\""},"finish_reason":"stop"}]}',
    ),
  );
  t.equal(text.toolCalls, false);
});

t.test('latency quantiles follow the observations within a bucket', async (t) => {
  const l = new ToolLatency();
  t.equal(l.quantile(0.5), undefined);
  for (let i = 0; i < 90; i++) l.observe(1000);
  for (let i = 0; i < 10; i++) l.observe(60_000);
  t.ok(Math.abs(l.quantile(0.5)! - 1000) / 1000 < 0.26, `p50 ${l.quantile(0.5)} ≈ 1 s`);
  t.ok(Math.abs(l.quantile(0.95)! - 60_000) / 60_000 < 0.26, `p95 ${l.quantile(0.95)} ≈ 60 s`);
});

t.test(
  'a tool-call response is remembered, learned from on return, and keeps the prefix per the learned quantile',
  async (t) => {
    const keeps: number[] = [];
    const retainer: KvRetainer = {
      name: 'lmcache',
      retain: (_w, _r, keepMs) => (keeps.push(keepMs), Promise.resolve(64)),
    };
    const { s, tick } = sessions({ minSamples: 3, defaultRetainMs: 5000, retainQuantile: 0.9 }, retainer);
    const key = sessionKeyOf(undefined, 'm', body)!;
    respond(s, key, Buffer.from('{"choices":[{"finish_reason":"stop"}]}'));
    t.equal(s.affinity(key), undefined, 'an ordinary answer leaves nothing pending');
    respond(s, key, TOOL_SSE, 500);
    t.equal(s.affinity(key), undefined, 'nor does a failed one');
    for (let i = 0; i < 3; i++) {
      respond(s, key, TOOL_SSE);
      tick(2000);
      const a = s.affinity(key)!;
      t.equal(a.worker, 'w1');
      t.same(a.tools, ['search']);
      s.returned(key, 'kept');
    }
    t.same(keeps, [5000, 5000, 5000], 'the default until minSamples returns');
    respond(s, key, TOOL_SSE);
    await new Promise((r) => setImmediate(r));
    t.ok(Math.abs(keeps[3]! - 2000) / 2000 < 0.26, `then the learned p90 (${keeps[3]})`);
    const a = s.affinity(key)!;
    t.ok(a.predictedReturnMs! > 1500 && a.predictedReturnMs! < 2600);
    t.equal(a.pinnedTokens, 64);
  },
);

t.test('memory is bounded: sessions and tools are LRU-capped', async (t) => {
  const { s } = sessions({ maxSessions: 10, maxTools: 3 });
  for (let i = 0; i < 50; i++) respond(s, `h:${i}`, TOOL_SSE);
  t.equal(s.summary().pendingSessions, 10);
  t.equal(s.affinity('h:0'), undefined, 'the oldest were dropped');
  t.ok(s.affinity('h:49'));
  for (let i = 0; i < 10; i++) {
    const name = Buffer.from(TOOL_SSE.toString().replace('search', `tool${i}`));
    respond(s, `h:t${i}`, name);
    s.returned(`h:t${i}`, 'kept');
  }
  t.equal(Object.keys(s.summary().tools as object).length, 3);
});

t.test('session keys and follow-ups', async (t) => {
  const follow = {
    messages: [...body.messages, { role: 'assistant', tool_calls: [] }, { role: 'tool', content: 'r' }],
  };
  t.equal(sessionKeyOf(undefined, 'm', body), sessionKeyOf(undefined, 'm', follow), 'later turns share the key');
  t.not(sessionKeyOf(undefined, 'm', body), sessionKeyOf(undefined, 'other', body));
  t.equal(sessionKeyOf('abc', 'm', body), 'h:abc');
  t.equal(isToolFollowUp(follow), true);
  t.equal(isToolFollowUp(body), false);
});

t.test('the pin is let go of when the follow-up comes, and a failing release costs a metric', async (t) => {
  const released: unknown[] = [];
  let fail = false;
  let pins = 64;
  const registry = new Registry();
  const retainer: KvRetainer = {
    name: 'lmcache',
    retain: () => Promise.resolve(pins),
    release: (w, r) => (released.push([w.id, r.body]), fail ? Promise.reject(new Error('down')) : Promise.resolve()),
  };
  const s = new ToolSessions({
    config: toolRetentionConfigSchema.parse({ enabled: true }),
    retainer,
    registry,
    log,
  });
  const metric = async (result: string) =>
    (await registry.getSingleMetric('kvgate_tool_retain_requests_total')!.get()).values.find(
      (v) => v.labels.result === result,
    )?.value ?? 0;
  const o = s.observe(sink, 'h:a', worker, 'm', body);
  o.data(TOOL_SSE);
  o.end(200);
  await new Promise((r) => setImmediate(r));
  t.same(released, [], 'held while the tool runs');
  s.returned('h:a', 'kept');
  await new Promise((r) => setImmediate(r));
  t.same(released, [['w1', body]]);
  t.equal(await metric('released'), 1);
  const turn = async (session: string) => {
    const o = s.observe(sink, session, worker, 'm', body);
    o.data(TOOL_SSE);
    o.end(200);
    await new Promise((r) => setImmediate(r));
    s.returned(session, 'kept');
    await new Promise((r) => setImmediate(r));
  };
  pins = 0;
  await turn('h:b');
  t.equal(released.length, 1, 'nothing pinned, nothing to release');
  pins = 64;
  fail = true;
  await turn('h:c');
  t.equal(released.length, 2);
  t.equal(await metric('release_error'), 1, 'a failing release: a metric');
  t.equal(s.affinity('h:c'), undefined);
});
