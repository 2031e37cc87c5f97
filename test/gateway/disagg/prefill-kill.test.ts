import t from 'tap';
import OpenAI from 'openai';
import { request } from 'undici';
import { eventually, metricValue, MODEL, startGateway } from '../../fixtures/gateway.js';
import { longText } from '../../fixtures/disagg.js';
import { debugWorker, faultConfig, startSimProcess } from '../../fixtures/resilience.js';

/**
 * The prefill leg runs through the same forwarding engine as any request: kill
 * one of two prefill workers (each its own `kvgate sim` process) under load and
 * its breaker opens from the prefill legs' failures alone (health checks are
 * too rare to notice), while every request, streamed or not, is served: a
 * failed prefill leg moves to the other prefill worker before any byte
 * reached the client.
 */
void t.test('a prefill worker killed under load: its breaker opens, no request fails', async (t) => {
  const teardown = t.teardown.bind(t);
  const sim = (id: string, role: string) => startSimProcess(teardown, id, ['--role', role, '--speedup', '10']);
  // One at a time: three tokenizers loading at once can outlast the ready timeout on a busy box.
  const p0 = await sim('p0', 'prefill');
  const p1 = await sim('p1', 'prefill');
  const d0 = await sim('d0', 'decode');
  const roles: Record<string, string> = { p0: 'prefill', p1: 'prefill', d0: 'decode' };
  const config = faultConfig(
    [p0, p1, d0].map((s) => ({ id: s.line.worker, url: s.line.url })),
    { routing: { strategy: 'least-load' } },
  ) as { fleet: { health: unknown; workers: { id: string; role?: string }[] } };
  config.fleet.health = { intervalMs: 60_000, timeoutMs: 500 };
  for (const w of config.fleet.workers) w.role = roles[w.id]!;
  const { url, adminUrl } = await startGateway(teardown, { ...config, disaggregation: { minUncachedTokens: 128 } });
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 30_000 });

  let stop = false;
  teardown(() => {
    stop = true;
  });
  const outcomes: { worker: string; path: string | null }[] = [];
  const failures: string[] = [];
  const plain = async (c: number) => {
    for (let i = 0; !stop; i++) {
      try {
        const r = await client.completions
          .create({ model: MODEL, prompt: longText(`plain ${c} ${i}`, 300), max_tokens: 4 })
          .withResponse();
        outcomes.push({
          worker: r.response.headers.get('x-kvgate-worker')!,
          path: r.response.headers.get('x-kvgate-disagg'),
        });
      } catch (err) {
        failures.push(`plain: ${String(err)}`);
      }
    }
  };
  const streamed = async (c: number) => {
    for (let i = 0; !stop; i++) {
      try {
        const r = await client.completions
          .create({ model: MODEL, prompt: longText(`stream ${c} ${i}`, 300), max_tokens: 4, stream: true })
          .withResponse();
        let chunks = 0;
        for await (const x of r.data) if (x.choices[0]) chunks++;
        if (chunks !== 4) failures.push(`stream: ${chunks} chunks`);
        outcomes.push({
          worker: r.response.headers.get('x-kvgate-worker')!,
          path: r.response.headers.get('x-kvgate-disagg'),
        });
      } catch (err) {
        failures.push(`stream: ${String(err)}`);
      }
    }
  };
  const load = [plain(0), plain(1), plain(2), streamed(0)];

  await eventually(() => outcomes.some((o) => o.worker.startsWith('prefill=p1')) || undefined, 20_000);
  const before = outcomes.length;
  await p1.kill();
  const victim = await eventually(async () => {
    const v = await debugWorker(adminUrl, 'p1');
    return (v.breaker.transitions.open ?? 0) >= 1 ? v : undefined;
  }, 20_000);
  t.pass(`p1's breaker opened: ${JSON.stringify(victim.breaker)}`);
  t.ok(victim.healthy, 'the health check has not noticed: the prefill legs opened the breaker');
  // Traffic goes on through the surviving prefill worker.
  const opened = outcomes.length;
  await eventually(() => outcomes.length >= opened + 6 || undefined, 20_000);
  stop = true;
  await Promise.all(load);

  t.same(failures, [], 'no request failed');
  t.ok(outcomes.length > before, `${outcomes.length} requests served, ${outcomes.length - before} after the kill`);
  t.ok(
    outcomes.slice(opened).every((o) => o.path === 'disaggregated' && o.worker.startsWith('prefill=p0,')),
    'after the breaker opened, every prefill leg went to p0',
  );
  const m = await (await request(`${url}/metrics`)).body.text();
  t.ok(
    (metricValue(m, 'kvgate_disagg_prefill_failures_total', { worker: 'p1', kind: 'connect' }) ?? 0) >= 1,
    'prefill legs on p1 failed to connect',
  );
  t.ok(
    (metricValue(m, 'kvgate_upstream_retries_total', { worker: 'p1' }) ?? 0) >= 1,
    'failed prefill legs were retried',
  );
  // A leg in flight at the kill fails with a reset, later ones cannot connect: the breaker counts both.
  const errors = ['connect', 'reset', 'other'].map(
    (kind) => metricValue(m, 'kvgate_upstream_errors_total', { worker: 'p1', kind }) ?? 0,
  );
  t.ok(errors.reduce((a, b) => a + b) >= 3, `p1's upstream errors (connect, reset, other): ${errors.join(', ')}`);
  t.ok(
    (metricValue(m, 'kvgate_worker_breaker_state', { worker: 'p1' }) ?? 0) >= 1,
    'not closed: the probes of a dead worker fail',
  );
});
