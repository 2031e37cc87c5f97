import t from 'tap';
import OpenAI from 'openai';
import { request } from 'undici';
import { eventually, metricValue, MODEL, startGateway } from '../../fixtures/gateway.js';
import { debugWorker, debugWorkers, faultConfig, startSimProcess } from '../../fixtures/resilience.js';

/**
 * Kill one of three workers (each its own `kvgate sim` process) under load:
 * non-streamed requests never fail, streams already under way on it end with
 * an SSE error event, its breaker opens (its index is kept: down is not dead);
 * restarted on the same ports, it gets traffic back through a half-open probe,
 * the restart is noticed and its index is rebuilt from the new process's events.
 */
const PROMPT = 'Resilience drill: the gateway must keep serving while a worker dies. '.repeat(6);

t.test('kill a worker under load, then bring it back', async (t) => {
  const teardown = t.teardown.bind(t);
  const sims = await Promise.all(
    ['w0', 'w1', 'w2'].map((id) => startSimProcess(teardown, id, ['--speedup', '5'], true)),
  );
  const { url, adminUrl } = await startGateway(
    teardown,
    faultConfig(
      sims.map((s) => ({ id: s.line.worker, url: s.line.url, kvEvents: s.line.kvEvents, kvReplay: s.line.kvReplay })),
      // Health checks slow enough that the breaker, fed by the failing requests, is what takes the victim out:
      // with the fixture's 200 ms checks a loaded machine let health win the race and the breaker never opened.
      { health: { intervalMs: 10_000 } },
    ),
  );
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const victim = 'w1';
  const blocksOf = async (id: string) => (await debugWorkers(adminUrl)).index?.workers?.[id]?.index?.blocks ?? 0;

  // Warm every worker's index.
  for (let i = 0; i < 3; i++)
    await client.completions.create({ model: MODEL, prompt: `${PROMPT} warm ${i}`, max_tokens: 2 });
  await eventually(async () => (await blocksOf(victim)) > 0);

  // One long stream per worker (round-robin), each already delivering tokens.
  const abort = new AbortController();
  teardown(() => abort.abort());
  const streams = await Promise.all(
    [0, 1, 2].map(async (i) => {
      const { data, response } = await client.completions
        .create({ model: MODEL, prompt: `stream ${i}`, max_tokens: 20_000, stream: true }, { signal: abort.signal })
        .withResponse();
      const s = {
        worker: response.headers.get('x-kvgate-worker')!,
        chunks: 0,
        error: undefined as Error | undefined,
        done: undefined as unknown as Promise<void>,
      };
      const it = data[Symbol.asyncIterator]();
      await it.next();
      s.chunks = 1;
      s.done = (async () => {
        try {
          for (;;) {
            const n = await it.next();
            if (n.done) return;
            s.chunks++;
          }
        } catch (err) {
          s.error = err as Error;
        }
      })();
      return s;
    }),
  );
  t.same(streams.map((s) => s.worker).sort(), ['w0', 'w1', 'w2']);

  // Steady non-streamed load from six clients while the victim dies.
  let stop = false;
  const outcomes: { status: number; worker: string | null }[] = [];
  const failures: string[] = [];
  const load = Array.from({ length: 6 }, async (_, c) => {
    for (let i = 0; !stop; i++) {
      try {
        const r = await client.completions
          .create({ model: MODEL, prompt: `${PROMPT} client ${c} request ${i}`, max_tokens: 4 })
          .withResponse();
        outcomes.push({ status: r.response.status, worker: r.response.headers.get('x-kvgate-worker') });
      } catch (err) {
        failures.push(String(err));
      }
    }
  });
  teardown(() => {
    stop = true;
  });
  await new Promise((r) => setTimeout(r, 500));
  const victimSim = sims[1]!;
  await victimSim.kill();

  const broken = streams.find((s) => s.worker === victim)!;
  await broken.done;
  t.match(
    broken.error?.message ?? '',
    /failed mid-response/,
    'the stream on the killed worker ends with the SSE error event',
  );
  t.ok(broken.chunks > 1, `it had delivered ${broken.chunks} chunks first`);
  const w = await eventually(async () => {
    const v = await debugWorker(adminUrl, victim);
    return v.breaker.transitions.open! >= 1 && !v.available ? v : undefined;
  });
  t.pass(`breaker opened: ${JSON.stringify(w.breaker)}`);
  // Down is not dead: a blip keeps the engine's cache, so the index stays (routing skips the worker anyway)
  // until the worker comes back and its event stream says whether it restarted.
  t.ok((await blocksOf(victim)) > 0, 'its index is kept while it is down');
  // Requests picked for the victim just before its breaker opened may still be
  // failing over when the breaker opens, so the release is checked eventually.
  const released = await eventually(async () => {
    const v = await debugWorker(adminUrl, victim);
    return v.load.inflightRequests === 0 ? v : undefined;
  });
  t.equal(released.load.inflightRequests, 0, 'its in-flight load is released');
  await new Promise((r) => setTimeout(r, 1000));
  t.ok(
    streams.filter((s) => s.worker !== victim).every((s) => s.error === undefined),
    'streams on the other workers go on',
  );

  // Back on the same ports: health passes, the half-open probe succeeds, traffic returns.
  await victimSim.restart();
  await eventually(async () => outcomes.slice(-12).some((o) => o.worker === victim) || undefined, 15_000);
  const back = await debugWorker(adminUrl, victim);
  t.equal(back.breaker.state, 'closed');
  t.ok(
    back.breaker.transitions['half-open']! >= 1 && back.breaker.transitions.closed! >= 1,
    `probed and closed: ${JSON.stringify(back.breaker.transitions)}`,
  );
  await eventually(async () => (await blocksOf(victim)) > 0, 10_000);
  const events = (await debugWorkers(adminUrl)).index?.workers?.[victim]?.events;
  t.ok(
    (events?.resets ?? 0) >= 1,
    `the restarted engine's sequence restart reset its index (${JSON.stringify(events)})`,
  );
  t.ok((events?.restarts ?? 0) >= 1, 'counted as a restart');

  stop = true;
  await Promise.all(load);
  abort.abort();
  t.same(failures, [], 'no non-streamed request failed');
  t.ok(outcomes.length > 30, `${outcomes.length} non-streamed requests served`);
  t.ok(outcomes.every((o) => o.status === 200));
  const metrics = await (await request(`${url}/metrics`)).body.text();
  t.ok(
    (metricValue(metrics, 'kvgate_upstream_retries_total', { worker: victim }) ?? 0) >= 1,
    'requests that failed on the victim were retried',
  );
  t.equal(metricValue(metrics, 'kvgate_worker_breaker_state', { worker: victim }), 0);
});
