import t, { type Test } from 'tap';
import OpenAI from 'openai';
import { request } from 'undici';
import { eventually, metricValue, MODEL, startGateway } from '../../fixtures/gateway.js';
import { debugWorker, faultConfig, startSimProcess, type SimProcess } from '../../fixtures/resilience.js';

/** Index-truth end to end: an engine restart is always noticed, a health blip does not blind the index. */

interface Events {
  lastSeq: string | null;
  restarts: number;
  resets: number;
  catchUps: number;
  lastCatchUpAt: number | null;
  probes: number;
}

async function setup(t: Test) {
  const teardown = t.teardown.bind(t);
  const sim = await startSimProcess(teardown, 'w0', ['--speedup', '50'], true);
  const { url, adminUrl } = await startGateway(
    teardown,
    faultConfig([{ id: 'w0', url: sim.line.url, kvEvents: sim.line.kvEvents, kvReplay: sim.line.kvReplay }], {
      routing: { strategy: 'kv' },
    }),
  );
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const state = async () => {
    const body = (await (await request(`${adminUrl}/debug/workers`)).body.json()) as {
      index: { workers: Record<string, { index?: { blocks: number }; events: Events }> };
    };
    const w = body.index.workers.w0!;
    return { blocks: w.index?.blocks ?? 0, events: w.events };
  };
  /** Blocks of `prompt` the gateway predicts w0 holds. */
  const predicted = async (prompt: string) => {
    const body = (await (
      await request(`${adminUrl}/debug/route`, {
        method: 'POST',
        body: JSON.stringify({ model: MODEL, prompt, max_tokens: 1 }),
      })
    ).body.json()) as { predictedCachedBlocks?: number };
    return body.predictedCachedBlocks ?? 0;
  };
  const complete = (prompt: string) => client.completions.create({ model: MODEL, prompt, max_tokens: 1 });
  const drop = async (s: SimProcess, count: number) => {
    const r = await request(`${s.line.url}/sim/drop-kv-events`, {
      method: 'POST',
      body: JSON.stringify({ count }),
      headers: { 'content-type': 'application/json' },
    });
    t.equal(r.statusCode, 200);
    await r.body.dump();
  };
  return { sim, url, adminUrl, state, predicted, complete, drop };
}

const OLD = 'What the engine cached before it died: a long and distinctive prompt. '.repeat(16);

t.test(
  'a restart whose first batches are lost, next seq above the old one, clears the dead engine blocks',
  async (t) => {
    const { sim, adminUrl, state, predicted, complete, drop } = await setup(t);
    for (let i = 0; i < 3; i++) await complete(`part ${i}: ${OLD}`);
    await eventually(async () => (await predicted(`part 0: ${OLD}`)) >= 8);
    const before = await state();
    const oldLast = Number(before.events.lastSeq);
    t.ok(oldLast >= 2, `old process published up to seq ${oldLast}`);

    await sim.kill();
    await sim.restart();
    // The new process's first batches never reach the gateway (lost while the subscriber reconnects).
    await drop(sim, oldLast + 3);
    await eventually(async () => (await debugWorker(adminUrl, 'w0')).healthy || undefined, 30_000);
    const NEW = 'The new process serves something else entirely. '.repeat(2);
    for (let i = 0; i < oldLast + 5; i++) await complete(`request ${i}: ${NEW.repeat(6)}`);

    const after = await eventually(async () => {
      const s = await state();
      return s.events.restarts >= 1 && Number(s.events.lastSeq) >= oldLast + 4 ? s : undefined;
    }, 30_000);
    t.ok(after.events.resets >= 1, `restart noticed: ${JSON.stringify(after.events)}`);
    t.equal(await predicted(`part 0: ${OLD}`), 0, 'no hit predicted on blocks the new engine never cached');
    t.ok((await predicted(`request 0: ${NEW.repeat(6)}`)) >= 4, "the new engine's blocks, replayed, are indexed");
  },
);

t.test('a health blip keeps the index; a batch lost in a quiet period is found by the probe', async (t) => {
  const { sim, url, adminUrl, state, predicted, complete, drop } = await setup(t);
  await complete(OLD);
  const blocks = await eventually(async () => {
    const p = await predicted(OLD);
    return p >= 8 ? p : undefined;
  });

  // The engine process freezes (a stuck driver, a long GC): health fails, the cache is still there.
  sim.proc.child.kill('SIGSTOP');
  t.teardown(() => sim.proc.child.kill('SIGCONT'));
  await eventually(async () => !(await debugWorker(adminUrl, 'w0')).healthy || undefined, 30_000);
  t.equal((await state()).blocks >= blocks, true, 'a worker failing health checks keeps its index');
  sim.proc.child.kill('SIGCONT');
  await eventually(async () => (await debugWorker(adminUrl, 'w0')).healthy || undefined, 30_000);
  t.equal(await predicted(OLD), blocks, 'back up: still predicted, nothing to rebuild');

  // One batch lost, then silence: no later batch reveals the gap.
  const LOST = 'A prompt whose only KV event batch is lost on the wire. '.repeat(6);
  await drop(sim, 1);
  await complete(LOST);
  const t0 = Date.now();
  const found = await eventually(
    async () => {
      const s = await state();
      return s.events.catchUps >= 1 && (await predicted(LOST)) >= 4 ? s : undefined;
    },
    30_000,
    100,
  );
  t.comment(`lost batch recovered ${Date.now() - t0} ms after the request (probe period 5000 ms)`);
  t.equal(found.events.restarts, 0, 'no restart');
  t.equal(found.events.resets, 0, 'no reset');
  t.ok(found.events.lastCatchUpAt !== null);
  const metrics = await (await request(`${url}/metrics`)).body.text();
  t.ok((metricValue(metrics, 'kvgate_kv_event_catchups_total', { worker: 'w0' }) ?? 0) >= 1, 'catch-up in /metrics');
  t.equal(metricValue(metrics, 'kvgate_kv_event_restarts_total', { worker: 'w0' }), 0);
});
