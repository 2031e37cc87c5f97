import t from 'tap';
import OpenAI from 'openai';
import { eventually, MODEL } from '../../fixtures/gateway.js';
import { longText, startPdPair } from '../../fixtures/disagg.js';

/**
 * Failures of each leg. The prefill and decode workers run in separate sim
 * processes so either can be killed; the health check polls rarely, so the
 * gateway still believes in a dead worker and the leg itself must cope.
 */
const pd = startPdPair;

t.test('a dead decode worker: an error for the client, no hang; the prefill blocks expire', async (t) => {
  const f = await pd(t, ['--nixl-abort-timeout', '2']);
  await f.d.sim.stop('SIGKILL');
  const started = Date.now();
  const err = await f.client.chat.completions
    .create({ model: MODEL, messages: [{ role: 'user', content: longText('dead-decode', 400) }], max_tokens: 4 })
    .then(
      () => undefined,
      (e: unknown) => e,
    );
  t.type(err, OpenAI.APIError);
  t.equal((err as InstanceType<typeof OpenAI.APIError>).status, 502);
  t.match((err as InstanceType<typeof OpenAI.APIError>).error, { type: 'upstream_error', code: 'upstream_connect' });
  t.ok(Date.now() - started < 10_000, 'answered promptly');
  const s = await eventually(async () => {
    const x = await f.stats(f.workers[0]!);
    return x.nixlExpired === 1 ? x : undefined;
  });
  t.equal(s.kvBlocksUsed, 0, 'nobody pulled: the prefill worker freed its blocks after the abort timeout');
});
