import t from 'tap';
import OpenAI from 'openai';
import { request } from 'undici';
import { eventually, metricValue, MODEL, startGateway, startSim } from '../fixtures/gateway.js';
import { longText, pdConfig } from '../fixtures/disagg.js';

/**
 * Failures of each leg. The prefill and decode workers run in separate sim
 * processes so either can be killed; the health check polls rarely, so the
 * gateway still believes in a dead worker and the leg itself must cope.
 */
const SLOW_HEALTH = { intervalMs: 60_000, timeoutMs: 500 };

async function pd(t: Tap.Test, prefillArgs: string[] = [], decodeArgs: string[] = []) {
  const teardown = t.teardown.bind(t);
  const [p, d] = await Promise.all([
    startSim(teardown, 1, ['--id-prefix', 'p-', '--role', 'prefill', '--speedup', '10', ...prefillArgs]),
    startSim(teardown, 1, ['--id-prefix', 'd-', '--role', 'decode', '--speedup', '10', ...decodeArgs]),
  ]);
  const workers = [p.workers[0]!, d.workers[0]!];
  const g = await startGateway(teardown, pdConfig(workers, ['prefill', 'decode'], { minUncachedTokens: 128 }, { strategy: 'kv' }, SLOW_HEALTH));
  const client = new OpenAI({ baseURL: `${g.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 20_000 });
  const stats = async (w: { url: string }) => (await (await request(`${w.url}/sim/stats`)).body.json()) as Record<string, number>;
  return { ...g, p, d, workers, client, stats };
}

t.test('a dead decode worker: an error for the client, no hang; the prefill blocks expire', async (t) => {
  const f = await pd(t, ['--nixl-abort-timeout', '2']);
  await f.d.sim.stop('SIGKILL');
  const started = Date.now();
  const err = await f.client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: longText('dead-decode', 400) }], max_tokens: 4 }).then(() => undefined, (e: unknown) => e);
  t.type(err, OpenAI.APIError);
  t.equal((err as InstanceType<typeof OpenAI.APIError>).status, 502);
  t.match((err as InstanceType<typeof OpenAI.APIError>).error, { type: 'upstream_error', code: 'upstream_connect' });
  t.ok(Date.now() - started < 10_000, 'answered promptly');
  const s = await eventually(async () => { const x = await f.stats(f.workers[0]!); return x.nixlExpired === 1 ? x : undefined; });
  t.equal(s.kvBlocksUsed, 0, 'nobody pulled: the prefill worker freed its blocks after the abort timeout');
});
