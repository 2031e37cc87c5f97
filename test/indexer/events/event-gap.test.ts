import t from 'tap';
import OpenAI from 'openai';
import { request } from 'undici';
import { eventually, metricValue, MODEL, startGateway } from '../../fixtures/gateway.js';
import { debugWorkers, faultConfig, startSimProcess } from '../../fixtures/resilience.js';

/** Events lost on the wire (the worker drops them before publishing): the gap is replayed, nothing is reset. */
t.test('dropped KV events are replayed from the engine', async (t) => {
  const teardown = t.teardown.bind(t);
  const sim = await startSimProcess(teardown, 'w0', ['--speedup', '50'], true);
  const config = faultConfig(
    [{ id: 'w0', url: sim.line.url, kvEvents: sim.line.kvEvents, kvReplay: sim.line.kvReplay }],
    { routing: { strategy: 'kv' } },
  ) as { fleet: { workers: { kvEvents: Record<string, unknown> }[] } };
  // The periodic replay probe would also find the dropped batches; this test is about the gap path.
  config.fleet.workers[0]!.kvEvents.probeIntervalMs = 0;
  const { url, adminUrl } = await startGateway(teardown, config);
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const events = async () => (await debugWorkers(adminUrl)).index?.workers?.w0?.events;
  const blocks = async () => (await debugWorkers(adminUrl)).index?.workers?.w0?.index?.blocks ?? 0;

  await client.completions.create({
    model: MODEL,
    prompt: 'A first prompt to get the stream going. '.repeat(10),
    max_tokens: 2,
  });
  await eventually(async () => ((await events())?.batchesApplied ?? 0) > 0);
  const before = await blocks();

  const drop = await request(`${sim.line.url}/sim/drop-kv-events`, {
    method: 'POST',
    body: JSON.stringify({ count: 2 }),
    headers: { 'content-type': 'application/json' },
  });
  t.equal(drop.statusCode, 200);
  await drop.body.dump();
  // Each request stores new blocks, so each produces a batch: two are dropped, the third reveals the gap.
  for (let i = 0; i < 4; i++) {
    await client.completions.create({
      model: MODEL,
      prompt: `Fresh prompt number ${i} with its own blocks. `.repeat(10),
      max_tokens: 2,
    });
  }
  const e = await eventually(async () => {
    const s = await events();
    return s && s.batchesReplayed >= 2 ? s : undefined;
  });
  t.ok(e.gaps >= 1, `gap seen: ${JSON.stringify(e)}`);
  t.equal(e.resets, 0, 'a replayed gap needs no reset');
  t.ok((await blocks()) > before, 'the blocks of the dropped batches are indexed');
  const metrics = await (await request(`${url}/metrics`)).body.text();
  t.ok((metricValue(metrics, 'kvgate_kv_event_batches_replayed_total', { worker: 'w0' }) ?? 0) >= 2);
});
