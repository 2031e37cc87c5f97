import t from 'tap';
import { writeFileSync } from 'node:fs';
import { request } from 'undici';
import { stringify } from 'yaml';
import {
  eventually,
  fleetConfig,
  metricValue,
  MODEL,
  startGateway,
  startSim,
  writeConfig,
  type SimWorkerLine,
} from '../../fixtures/gateway.js';
import { debugWorkers } from '../../fixtures/resilience.js';
import { startCli } from '../../fixtures/processes.js';

interface Outcome {
  at: number;
  worker: string;
  strategy: string;
  ok: boolean;
  detail: string;
}

/** `loops` clients sending requests back to back (every third one streamed) until `stop()`. */
function load(url: string, loops = 4): { outcomes: Outcome[]; stop: () => Promise<void> } {
  const outcomes: Outcome[] = [];
  let running = true;
  let n = 0;
  const one = async () => {
    const stream = n++ % 3 === 0;
    const body = JSON.stringify({
      model: MODEL,
      stream,
      max_tokens: stream ? 12 : 4,
      messages: [{ role: 'user', content: `request ${n % 17}: say something about caches` }],
    });
    const at = Date.now();
    try {
      const res = await request(`${url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-session-id': `s${n % 9}` },
        body,
      });
      const text = await res.body.text();
      const ok = res.statusCode === 200 && (!stream || text.includes('data: [DONE]'));
      outcomes.push({
        at,
        worker: String(res.headers['x-kvgate-worker']),
        strategy: String(res.headers['x-kvgate-strategy']),
        ok,
        detail: ok ? '' : `${res.statusCode} ${text.slice(0, 200)}`,
      });
    } catch (err) {
      outcomes.push({ at, worker: '', strategy: '', ok: false, detail: String(err) });
    }
  };
  const loopsDone = Array.from({ length: loops }, async () => {
    while (running) await one();
  });
  return {
    outcomes,
    stop: async () => {
      running = false;
      await Promise.all(loopsDone);
    },
  };
}

// kv with a low reuse credit: this file checks reloads, and at the default credit the 17 short
// prompts, cached on w1 alone once w0 is gone, would stay with w1 by design until its queue grew.
const config = (workers: SimWorkerLine[], strategy: string, extra: Record<string, unknown> = {}) =>
  fleetConfig(
    workers,
    { strategy, ...(strategy === 'kv' ? { params: { reuseCredit: 3 } } : {}) },
    { server: { host: '127.0.0.1', port: 0 }, admin: { port: 0 }, ...extra },
  );

t.test('SIGHUP under load: strategy changes, a worker joins, another drains; no request fails', async (t) => {
  const { workers } = await startSim(t.teardown.bind(t), 3, [
    '--kv-events',
    'tcp://127.0.0.1:*',
    '--kv-events-replay',
    'tcp://127.0.0.1:*',
  ]);
  const [w0, w1, w2] = workers as [SimWorkerLine, SimWorkerLine, SimWorkerLine];
  const g = await startGateway(t.teardown.bind(t), config([w0, w1], 'round-robin'));
  const traffic = load(g.url);
  t.teardown(() => traffic.stop());
  await eventually(() => traffic.outcomes.filter((o) => o.ok).length >= 20, 15_000);
  t.ok(
    traffic.outcomes.some((o) => o.worker === w0.worker),
    'w0 takes traffic before the reload',
  );

  // Long streams in flight across the reload: the ones on w0 must finish there while it drains.
  const streams = Array.from({ length: 4 }, async () => {
    const res = await request(`${g.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: MODEL,
        stream: true,
        max_tokens: 300,
        messages: [{ role: 'user', content: 'a long one' }],
      }),
    });
    const text = await res.body.text();
    return {
      worker: String(res.headers['x-kvgate-worker']),
      done: res.statusCode === 200 && text.includes('data: [DONE]'),
      endedAt: Date.now(),
    };
  });
  await new Promise((r) => setTimeout(r, 200));
  writeFileSync(g.configFile, stringify(config([w1, w2], 'kv')));
  g.gateway.child.kill('SIGHUP');
  const [reloaded] = await g.gateway.waitFor('config reloaded', 1, 10_000);
  const long = await Promise.all(streams);
  t.ok(
    long.every((s) => s.done),
    'every long stream ended with [DONE]',
  );
  t.ok(
    long.some((s) => s.worker === w0.worker && s.endedAt > Number(reloaded!.time)),
    'a stream on the removed worker outlived the reload (drained, not cut)',
  );
  t.same(reloaded!.added, [w2.worker]);
  t.same(reloaded!.removed, [w0.worker]);
  t.equal(reloaded!.strategy, 'kv');
  const [drained] = await g.gateway.waitFor('worker drained', 1, 15_000);
  t.equal(drained!.worker, w0.worker);
  const afterDrain = Date.now();
  await eventually(() => traffic.outcomes.some((o) => o.at > afterDrain && o.worker === w2.worker), 15_000);
  await eventually(() => traffic.outcomes.filter((o) => o.at > afterDrain).length >= 30, 15_000);

  // An invalid file is rejected, the running config stays; a port change is reported as needing a restart.
  writeFileSync(g.configFile, stringify(config([w1, w2], 'fastest')));
  g.gateway.child.kill('SIGHUP');
  const [rejected] = await g.gateway.waitFor('config reload rejected', 1, 10_000);
  t.match(String(rejected!.error), /routing\.strategy: unknown strategy 'fastest'/, 'the log line says why');
  writeFileSync(
    g.configFile,
    stringify(config([w1, w2], 'kv', { server: { host: '127.0.0.1', port: 0, keepAliveTimeoutMs: 5000 } })),
  );
  g.gateway.child.kill('SIGHUP');
  const [restart] = await g.gateway.waitFor('config change needs a restart to take effect', 1, 10_000);
  t.same(restart!.keys, ['server']);
  const settled = Date.now();
  await eventually(() => traffic.outcomes.filter((o) => o.at > settled).length >= 20, 15_000);
  await traffic.stop();

  const failed = traffic.outcomes.filter((o) => !o.ok);
  t.equal(
    failed.length,
    0,
    `no request failed (${failed
      .slice(0, 3)
      .map((f) => f.detail)
      .join(' | ')})`,
  );
  t.ok(traffic.outcomes.length > 60, `${traffic.outcomes.length} requests sent`);
  const late = traffic.outcomes.filter((o) => o.at > afterDrain);
  t.notOk(
    late.some((o) => o.worker === w0.worker),
    'nothing went to the removed worker after it drained',
  );
  t.ok(
    late.every((o) => o.strategy === 'kv'),
    'new requests use the new strategy, also after the rejected reload',
  );
  const dbg = await debugWorkers(g.adminUrl);
  t.same(dbg.workers.map((w) => w.id).sort(), [w1.worker, w2.worker], '/debug/workers shows the new fleet');
  const index = dbg.index?.workers ?? {};
  t.ok(index[w2.worker]?.events?.connected, "the added worker's KV events are subscribed");
  t.notOk(index[w0.worker]?.events, "the removed worker's event source is gone");
  const metrics = await (await request(`${g.url}/metrics`)).body.text();
  t.equal(metricValue(metrics, 'kvgate_config_reloads_total', { result: 'ok' }), 2);
  t.equal(metricValue(metrics, 'kvgate_config_reloads_total', { result: 'rejected' }), 1);
  t.ok(
    (metricValue(metrics, 'kvgate_tokenizer_cache_bytes', { model: MODEL }) ?? 0) > 0,
    'tokenizer cache size is exported',
  );
});

t.test('--watch-config: a changed file is reloaded without a signal', async (t) => {
  const { workers } = await startSim(t.teardown.bind(t), 2);
  const [w0, w1] = workers as [SimWorkerLine, SimWorkerLine];
  const file = writeConfig(t.teardown.bind(t), config([w0], 'round-robin'));
  const gateway = startCli(['serve', '--config', file, '--watch-config']);
  t.teardown(() => gateway.stop());
  const [ready] = await gateway.waitFor('gateway ready', 1, 30_000);
  writeFileSync(file, stringify(config([w0, w1], 'least-load')));
  const [reloaded] = await gateway.waitFor('config reloaded', 1, 10_000);
  t.same(reloaded!.added, [w1.worker]);
  t.equal(reloaded!.strategy, 'least-load');
  await eventually(
    async () => (await debugWorkers(String(ready!.adminUrl))).workers.find((w) => w.id === w1.worker)?.available,
    10_000,
  );
  const res = await request(`${String(ready!.url)}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, prompt: 'hi', max_tokens: 2 }),
  });
  t.equal(res.headers['x-kvgate-strategy'], 'least-load');
  await res.body.dump();
  // Writing the same content again is not a change.
  writeFileSync(file, stringify(config([w0, w1], 'least-load')));
  await new Promise((r) => setTimeout(r, 800));
  t.equal(gateway.lines.filter((l) => l.msg === 'config reloaded').length, 1, 'an unchanged file is not reloaded');
});
