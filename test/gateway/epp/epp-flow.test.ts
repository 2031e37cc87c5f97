import t from 'tap';
import { request } from 'undici';
import { eventually, fleetConfig, metricValue, MODEL, startSim } from '../../fixtures/gateway.js';
import { startEpp } from '../../fixtures/epp.js';

/**
 * Flow control and admission in EPP mode: a shed request gets the proxy mode's 429
 * as an ImmediateResponse; a held one keeps its ext_proc stream open until it is
 * picked; a stream cancelled while held leaves the queue.
 */

const chat = (content: string) =>
  Buffer.from(JSON.stringify({ model: MODEL, messages: [{ role: 'user', content }], max_tokens: 4 }));
const request_ = (content: string) => ({
  path: '/v1/chat/completions',
  chunks: [chat(content)],
  keepOpen: true,
  headers: { 'x-request-id': `req-${content}` },
});

void t.test('flow control and admission answer as in proxy mode', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 1, ['--speedup', '20']);
  // Any prefill in flight saturates the one worker: a second request waits, a third finds the queue full.
  const flow = {
    enabled: true,
    classes: [{ name: 'standard', maxQueued: 1, ttlMs: 30_000 }],
    retryAfterSeconds: 7,
    saturation: { default: { prefillTokens: 1 } },
  };
  const [f, a] = await Promise.all([
    startEpp(teardown, fleetConfig(workers, { strategy: 'least-load' }, { flow }), { name: 'flow.yaml' }),
    startEpp(
      teardown,
      {
        ...fleetConfig(workers, { strategy: 'least-load' }),
        server: { host: '127.0.0.1', overload: { maxInflight: 1, maxQueued: 0, retryAfterSeconds: 3 } },
      },
      { name: 'overload.yaml' },
    ),
  ]);
  const queued = async () =>
    ((await (await request(`${f.adminUrl}/debug/flow`)).body.json()) as { queued: number }).queued;
  const picked = (s: { out: { header?: string | undefined } }) => async () => s.out.header !== undefined;

  await t.test('flow control: held while saturated, shed with 429 when the queue is full', async (t) => {
    const first = f.envoy.open(request_('first'));
    await eventually(picked(first));
    const held = f.envoy.open(request_('held'));
    await eventually(async () => (await queued()) === 1);
    t.equal(held.out.responses.length, 0, 'the held request has no answer yet; its stream stays open');

    const shed = await f.envoy.process({ ...request_('shed'), keepOpen: false });
    t.equal(shed.immediate?.status, 429, 'the queue is full: ImmediateResponse 429');
    t.match(JSON.parse(shed.immediate!.body), { error: { type: 'rate_limit_error', code: 'queue_full' } });
    t.match(shed.immediate!.headers, {
      'retry-after': '7',
      'x-kvgate-priority': 'standard',
      'x-request-id': 'req-shed',
      'content-type': 'application/json',
    });
    t.notOk(shed.header, 'no endpoint offered');

    held.call.cancel();
    await held.done;
    await eventually(async () => (await queued()) === 0);
    t.pass('the cancelled stream left the queue');
    const metrics = await (await request(`${f.url}/metrics`)).body.text();
    t.equal(metricValue(metrics, 'kvgate_flow_shed_total', { reason: 'disconnected' }), 1);
    t.equal(metricValue(metrics, 'kvgate_flow_shed_total', { reason: 'queue_full' }), 1);

    const waiting = f.envoy.open(request_('waiting'));
    await eventually(async () => (await queued()) === 1);
    first.call.end(); // the first request's stream ends: its worker has room
    await eventually(picked(waiting));
    t.equal(waiting.out.header, new URL(workers[0]!.url).host, 'the held request is picked once there is room');
    t.match(
      waiting.out.setHeaders['x-kvgate-flow'],
      /^class=standard; tenant=anonymous; wait_ms=\d+$/,
      'the header mutation says what flow control did',
    );
    t.equal(await queued(), 0);
    waiting.call.end();
    await Promise.all([first.done, waiting.done]);
  });

  await t.test('admission (server.overload): 429 beyond the concurrency bound, before the body', async (t) => {
    const first = a.envoy.open(request_('one'));
    await eventually(picked(first));
    const refused = await a.envoy.process({ ...request_('two'), keepOpen: false });
    t.equal(refused.immediate?.status, 429);
    t.match(JSON.parse(refused.immediate!.body), { error: { type: 'rate_limit_error', code: 'rate_limit_exceeded' } });
    t.match(refused.immediate!.headers, { 'retry-after': '3', 'x-request-id': 'req-two' });
    const models = await a.envoy.process({ path: '/v1/models' });
    t.ok(models.header, 'a header-only engine route is not bounded');
    first.call.end();
    await first.done;
    const next = await a.envoy.process({ ...request_('three'), keepOpen: false });
    t.notOk(next.immediate, 'the slot was released when the stream ended');
    t.equal(next.header, new URL(workers[0]!.url).host);
  });
});
