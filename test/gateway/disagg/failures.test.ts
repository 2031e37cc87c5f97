import t from 'tap';
import { request } from 'undici';
import { metricValue, MODEL } from '../../fixtures/gateway.js';
import { longText, startPdPair } from '../../fixtures/disagg.js';

/**
 * Failures of each leg. The prefill and decode workers run in separate sim
 * processes so either can be killed; the health check polls rarely, so the
 * gateway still believes in a dead worker and the leg itself must cope.
 */
const pd = startPdPair;

t.test('a dead prefill worker: the request is served whole on the decode worker', async (t) => {
  const f = await pd(t);
  await f.p.sim.stop('SIGKILL');
  const r = await f.client.chat.completions
    .create({ model: MODEL, messages: [{ role: 'user', content: longText('fallback', 400) }], max_tokens: 4 })
    .withResponse();
  t.equal(r.response.status, 200);
  t.equal(r.response.headers.get('x-kvgate-disagg'), 'prefill_fallback');
  t.equal(r.response.headers.get('x-kvgate-worker'), 'd-0');
  t.equal(r.data.usage?.completion_tokens, 4);
  t.equal(r.data.usage?.prompt_tokens_details?.cached_tokens, 0, 'recomputed on the decode worker');
  const m = await (await request(`${f.url}/metrics`)).body.text();
  t.equal(metricValue(m, 'kvgate_disagg_requests_total', { path: 'prefill_fallback' }), 1);
  t.equal(metricValue(m, 'kvgate_disagg_prefill_failures_total', { worker: 'p-0', kind: 'connect' }), 1);
});
