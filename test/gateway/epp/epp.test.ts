import t from 'tap';
import { request } from 'undici';
import { eventually, fleetConfig, metricValue, MODEL, startSim, type SimWorkerLine } from '../../fixtures/gateway.js';
import { splitInto } from '../../fixtures/envoy.js';
import { startEpp } from '../../fixtures/epp.js';

/**
 * `kvgate epp` end to end: the simulator as the model servers, and the test
 * as Envoy (tests/fixtures/envoy.ts) speaking ext_proc over real gRPC.
 */

const endpoint = (w: SimWorkerLine) => new URL(w.url).host;
const chat = (content: string, extra: Record<string, unknown> = {}) =>
  Buffer.from(JSON.stringify({ model: MODEL, messages: [{ role: 'user', content }], max_tokens: 4, ...extra }));

void t.test('the ext_proc protocol: headers, chunked bodies, subset hints, responses, errors', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 3, ['--speedup', '20']);
  const { envoy, url } = await startEpp(teardown, fleetConfig(workers, { strategy: 'least-load' }));
  const all = new Set(workers.map(endpoint));
  // Fallbacks are drawn from available workers: a start-up probe that a loaded machine answered late leaves a
  // worker out until the next 200 ms round, so the subtests start once all three are in.
  await eventually(async () => {
    const r = (await (await request(`${url}/ready`)).body.json()) as { healthyWorkers: number };
    return r.healthyWorkers === 3 || undefined;
  }, 20_000);

  t.equal(await envoy.check(''), 'SERVING', 'liveness');
  t.equal(await envoy.check('readiness'), 'SERVING', 'readiness');
  t.equal(await envoy.check('envoy.service.ext_proc.v3.ExternalProcessor'), 'SERVING', 'the processor service');

  await t.test('a header-only request gets an endpoint in the header and the metadata', async (t) => {
    const r = await envoy.process({ path: '/v1/models' });
    t.ok(r.header && all.has(r.header), `picked ${r.header}`);
    t.equal(r.metadata, r.header, 'same value in envoy.lb metadata');
  });

  await t.test('a body split in many chunks, one inside a UTF-8 sequence, comes back whole', async (t) => {
    const body = chat('Grüße aus München — naïve café, 日本語のテキスト. '.repeat(20));
    const at = body.indexOf(Buffer.from('ü')) + 1; // between the two bytes of 'ü'
    const chunks = [body.subarray(0, at), ...splitInto(body.subarray(at), 37)];
    t.ok(chunks.length > 30);
    const r = await envoy.process({ path: '/v1/chat/completions', chunks });
    t.notOk(r.immediate, 'routed');
    const picked = r.header!.split(',');
    t.ok(all.has(picked[0]!), `picked ${picked[0]}`);
    t.equal(picked.length, 3, 'two ordered fallbacks from the ranking');
    t.equal(new Set(picked).size, 3, 'distinct endpoints');
    t.equal(r.metadata, r.header);
    t.ok(Buffer.concat(r.requestBody).equals(body), 'body streamed back unchanged');
  });

  await t.test('fallbacks among idle workers: ties broken once, every pick offers all three', async (t) => {
    // Regression: the fallback search asked the strategy again for every candidate it compared, and
    // least-load breaks ties at random, so a tie could match none and no fallback was offered.
    for (let i = 0; i < 16; i++) {
      const r = await envoy.process({ path: '/v1/chat/completions', chunks: [chat(`tie ${i}`)] });
      const picked = r.header!.split(',');
      t.equal(new Set(picked).size, 3, `request ${i}: ${r.header}`);
    }
  });

  await t.test('a 1 MB prompt is routed and streamed back in chunks under Envoy limits', async (t) => {
    const body = Buffer.from(JSON.stringify({ model: MODEL, prompt: 'kv cache '.repeat(116_509), max_tokens: 1 }));
    t.ok(body.length > 1024 * 1024);
    const r = await envoy.process({ path: '/v1/completions', chunks: splitInto(body, 64) });
    t.notOk(r.immediate);
    t.ok(r.requestBody.length >= 17, `${r.requestBody.length} chunks`);
    t.ok(
      r.requestBody.every((c) => c.length <= 62 * 1024),
      'every chunk at most 62 KiB',
    );
    t.ok(Buffer.concat(r.requestBody).equals(body));
  });

  await t.test('subset hints narrow the choice; an empty eligible set answers 503', async (t) => {
    const only = endpoint(workers[2]!);
    for (let i = 0; i < 3; i++) {
      const r = await envoy.process({ path: '/v1/chat/completions', chunks: [chat(`hint ${i}`)], subset: [only] });
      t.equal(r.header, only, 'only the hinted endpoint');
    }
    const none = await envoy.process({ path: '/v1/chat/completions', chunks: [chat('x')], subset: [] });
    t.equal(none.immediate?.status, 503);
    t.match(JSON.parse(none.immediate!.body), { error: { code: 'no_healthy_worker', type: 'service_unavailable' } });
    const stranger = await envoy.process({ path: '/v1/chat/completions', chunks: [chat('x')], subset: ['10.9.9.9:1'] });
    t.equal(stranger.immediate?.status, 503, 'a hint naming no known endpoint');
    const headerOnly = await envoy.process({ path: '/v1/models', subset: [] });
    t.equal(headerOnly.immediate?.status, 503, 'header-only too');
    const legacy = await envoy.process({
      path: '/v1/chat/completions',
      chunks: [chat('old namespace')],
      subset: [only],
      subsetNamespace: 'envoy.lb',
    });
    t.equal(legacy.header, only, 'a hint under the older envoy.lb namespace is honoured too');
  });

  await t.test('bad bodies get a 4xx immediate response with an OpenAI error', async (t) => {
    const r = await envoy.process({
      path: '/v1/chat/completions',
      chunks: [Buffer.from('{"model": "'), Buffer.from('x"')],
    });
    t.equal(r.immediate?.status, 400);
    t.match(JSON.parse(r.immediate!.body), { error: { code: 'invalid_json', type: 'invalid_request_error' } });
    const unknown = await envoy.process({ path: '/v1/chat/completions', chunks: [chat('x', { model: 'nope' })] });
    t.equal(unknown.immediate?.status, 404);
  });

  await t.test('a streamed response passes through and is accounted, served endpoint fed back', async (t) => {
    const body = chat('Tell me a story.', { stream: true, max_tokens: 16, stream_options: { include_usage: true } });
    const r = await envoy.process({ path: '/v1/chat/completions', chunks: [body], forward: true });
    t.equal(r.upstreamStatus, 200);
    const text = Buffer.concat(r.responseBody).toString('utf8');
    t.match(text, /data: \[DONE\]/, 'the SSE stream came back through the processor');
    t.match(text, /"usage"/);
    const metrics = await (await request(`${url}/metrics`)).body.text();
    t.ok(
      (metricValue(metrics, 'kvgate_requests_total', { route: 'epp', status: '200' }) ?? 0) >= 1,
      'the request is counted when its response ended',
    );
    t.ok((metricValue(metrics, 'kvgate_time_to_first_token_seconds_count') ?? 0) >= 1, 'TTFT observed');
    t.equal(
      metricValue(metrics, 'kvgate_inflight_requests', { worker: r.setHeaders['x-kvgate-worker']! }) ?? 0,
      0,
      'load released',
    );
  });

  await t.test('the served-endpoint feedback moves the load to the endpoint that served', async (t) => {
    const idOf = (ep: string) => workers.find((w) => endpoint(w) === ep)!.worker;
    const inflight = async (ep: string) =>
      metricValue(await (await request(`${url}/metrics`)).body.text(), 'kvgate_inflight_requests', {
        worker: idOf(ep),
      }) ?? 0;
    const served = (ep: string) => ({
      filter_metadata: { 'envoy.lb': { fields: { 'x-gateway-destination-endpoint-served': { stringValue: ep } } } },
    });
    const s = envoy.open({ path: '/v1/chat/completions', chunks: [chat('served elsewhere')], keepOpen: true });
    await eventually(async () => s.out.requestBody.length > 0 || undefined);
    const offered = s.out.header!.split(',');
    const picked = offered[0]!;
    // Envoy's retry went to the first fallback, which answered (a worker that flapped unhealthy
    // under a loaded machine may be missing from the offer: then another known worker).
    const fallback = offered[1] ?? [...all].find((e) => e !== picked)!;
    const kind = offered.includes(fallback) ? 'fallback' : 'other_worker';
    const count = (text: string, name: string, labels: Record<string, string>) =>
      metricValue(text, name, { worker: idOf(fallback), ...labels }) ?? 0;
    const before = await (await request(`${url}/metrics`)).body.text();
    t.equal(await inflight(picked), 1, 'the load is taken on the picked endpoint');
    s.call.write({
      response_headers: { headers: { headers: [{ key: ':status', raw_value: Buffer.from('200') }] } },
      metadata_context: served(fallback),
    });
    await eventually(async () => {
      const [a, b] = [await inflight(picked), await inflight(fallback)];
      if (a === 0 && b === 1) return true;
      throw new Error(`in flight: picked ${a}, fallback ${b}`);
    });
    t.pass('the load moved to the fallback that served');
    s.call.write({ response_body: { body: Buffer.from('{"choices": []}'), end_of_stream: true } });
    await s.done;
    const metrics = await (await request(`${url}/metrics`)).body.text();
    t.equal(metricValue(metrics, 'kvgate_epp_served_elsewhere_total', { kind }), 1, `counted (${kind})`);
    t.equal(metricValue(metrics, 'kvgate_inflight_requests', { worker: idOf(fallback) }), 0, 'released there');
    const ttft = 'kvgate_time_to_first_token_seconds_count';
    t.equal(count(metrics, ttft, {}), count(before, ttft, {}) + 1, 'TTFT observed on the endpoint that served');
    const served200 = { route: 'epp', status: '200' };
    t.equal(
      count(metrics, 'kvgate_requests_total', served200),
      count(before, 'kvgate_requests_total', served200) + 1,
      'the request counted on the endpoint that served',
    );

    const u = envoy.open({ path: '/v1/chat/completions', chunks: [chat('served by a stranger')], keepOpen: true });
    await eventually(async () => u.out.requestBody.length > 0 || undefined);
    const mine = u.out.header!.split(',')[0]!;
    u.call.write({
      response_headers: { headers: { headers: [{ key: ':status', raw_value: Buffer.from('200') }] } },
      metadata_context: served('10.9.9.9:8000'),
    });
    u.call.write({ response_body: { body: Buffer.from('{}'), end_of_stream: true } });
    await u.done;
    const after = await (await request(`${url}/metrics`)).body.text();
    t.equal(metricValue(after, 'kvgate_epp_served_elsewhere_total', { kind: 'unknown' }), 1, 'an unknown one counted');
    t.equal(metricValue(after, 'kvgate_inflight_requests', { worker: idOf(mine) }), 0, 'its load released');
  });

  await t.test('the HTTP port serves only /metrics, /health and /ready (no --proxy)', async (t) => {
    for (const path of ['/health', '/ready', '/metrics'])
      t.equal((await request(`${url}${path}`)).statusCode, 200, `${path} answers`);
    const post = await request(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: chat('through the metrics port?'),
    });
    t.equal(post.statusCode, 404, 'no inference through the EPP');
    t.match(await post.body.json(), { error: { code: 'epp_mode', type: 'not_found_error' } });
    const models = await request(`${url}/v1/models`);
    t.equal(models.statusCode, 404, 'nor any other proxy route');
    await models.body.dump();
  });

  await t.test('a client cancel mid-stream releases the load', async (t) => {
    const body = chat('A long answer please.', { stream: true, max_tokens: 400 });
    const r = await envoy.process({
      path: '/v1/chat/completions',
      chunks: [body],
      forward: true,
      cancelAfterChunks: 2,
    });
    t.equal(r.upstreamStatus, 200);
    const worker = r.setHeaders['x-kvgate-worker']!;
    let inflight = -1;
    for (let i = 0; i < 100 && inflight !== 0; i++) {
      await new Promise((res) => setTimeout(res, 100));
      inflight =
        metricValue(await (await request(`${url}/metrics`)).body.text(), 'kvgate_inflight_requests', { worker }) ?? 0;
    }
    t.equal(inflight, 0, 'in-flight back to 0 after the cancel');
    const metrics = await (await request(`${url}/metrics`)).body.text();
    t.ok((metricValue(metrics, 'kvgate_requests_total', { route: 'epp', status: '499' }) ?? 0) >= 1, 'counted as 499');
  });
});
