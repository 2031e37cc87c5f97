import t from 'tap';
import { request } from 'undici';
import { metricValue, MODEL, startGateway } from '../../fixtures/gateway.js';
import { debugWorker, faultConfig, hungWorker, startSimProcess } from '../../fixtures/resilience.js';

const completion = (url: string, body: Record<string, unknown>, signal?: AbortSignal) =>
  request(`${url}/v1/completions`, {
    method: 'POST',
    body: JSON.stringify({ model: MODEL, ...body }),
    headers: { 'content-type': 'application/json' },
    signal,
  });

t.test('a hung worker trips the headers timeout and the request is retried elsewhere', async (t) => {
  const teardown = t.teardown.bind(t);
  const hung = await hungWorker(teardown);
  const sim = await startSimProcess(teardown, 'ok', ['--speedup', '50']);
  const { url, adminUrl } = await startGateway(
    teardown,
    faultConfig(
      [
        { id: 'hung', url: hung.url },
        { id: 'ok', url: sim.line.url },
      ],
      {
        upstream: { headersTimeoutMs: 600 },
      },
    ),
  );

  const results = await Promise.all(
    Array.from({ length: 4 }, async (_, i) => {
      const r = await completion(url, { prompt: `request ${i}`, max_tokens: 4 });
      const body = (await r.body.json()) as { usage?: { completion_tokens: number } };
      return {
        status: r.statusCode,
        worker: r.headers['x-kvgate-worker'],
        retries: r.headers['x-kvgate-retries'],
        tokens: body.usage?.completion_tokens,
      };
    }),
  );
  t.ok(hung.accepted() >= 1, `the hung worker accepted ${hung.accepted()} request(s)`);
  for (const r of results) {
    t.equal(r.status, 200, JSON.stringify(r));
    t.equal(r.worker, 'ok', 'answered by the live worker');
    t.equal(r.tokens, 4);
  }
  t.ok(
    results.some((r) => r.retries === '1'),
    'at least one request was retried once',
  );
  const metrics = await (await request(`${url}/metrics`)).body.text();
  t.ok(
    (metricValue(metrics, 'kvgate_upstream_retries_total', { worker: 'hung', kind: 'timeout' }) ?? 0) >= 1,
    'the retry is counted as a timeout on the hung worker',
  );
  t.equal(
    metricValue(metrics, 'kvgate_inflight_requests', { worker: 'hung' }),
    0,
    'the hung worker holds no load after its timeout',
  );
  t.equal(metricValue(metrics, 'kvgate_inflight_requests', { worker: 'ok' }), 0);

  // Three timeouts in a row open its breaker; while open it gets nothing.
  for (let i = 0; i < 6; i++) await (await completion(url, { prompt: `more ${i}`, max_tokens: 1 })).body.dump();
  const w = await debugWorker(adminUrl, 'hung');
  t.ok(w.breaker.transitions.open! >= 1, `breaker opened (${JSON.stringify(w.breaker)})`);
  t.ok(hung.accepted() <= 4, `no traffic while open: ${hung.accepted()} accepted in all`);
  const after = await (await request(`${url}/metrics`)).body.text();
  t.ok((metricValue(after, 'kvgate_worker_breaker_transitions_total', { worker: 'hung', to: 'open' }) ?? 0) >= 1);
});

t.test('beyond maxInflight and the queue the gateway answers 429 with retry-after', async (t) => {
  const teardown = t.teardown.bind(t);
  const sim = await startSimProcess(teardown, 'w', ['--speedup', '1']);
  const { url } = await startGateway(
    teardown,
    faultConfig([{ id: 'w', url: sim.line.url }], {
      server: { overload: { maxInflight: 2, maxQueued: 1, queueTimeoutMs: 20_000, retryAfterSeconds: 2 } },
    }),
  );
  const abort = new AbortController();
  teardown(() => abort.abort());
  // Two long generations take both slots.
  const long = await Promise.all(
    [0, 1].map((i) => completion(url, { prompt: `long ${i}`, max_tokens: 20_000, stream: true }, abort.signal)),
  );
  for (const r of long) t.equal(r.statusCode, 200);
  // A third waits in the queue; a fourth finds the queue full.
  const queued = completion(url, { prompt: 'queued', max_tokens: 2 });
  await new Promise((r) => setTimeout(r, 200));
  const refused = await completion(url, { prompt: 'refused', max_tokens: 2 });
  t.equal(refused.statusCode, 429);
  t.equal(refused.headers['retry-after'], '2');
  t.match(await refused.body.json(), {
    error: { type: 'rate_limit_error', code: 'rate_limit_exceeded', param: null, message: /limit of 2 concurrent/ },
  });
  const metrics = await (await request(`${url}/metrics`)).body.text();
  t.equal(metricValue(metrics, 'kvgate_overload_rejected_total', { reason: 'queue_full' }), 1);
  t.equal(metricValue(metrics, 'kvgate_gateway_queued_requests'), 1);
  // Freeing a slot lets the queued request through.
  for (const r of long) r.body.destroy();
  const q = await queued;
  t.equal(q.statusCode, 200, 'the queued request is served once a slot frees up');
  t.match(await q.body.json(), { usage: { completion_tokens: 2 } });
});
