import t from 'tap';
import { eventually, MODEL } from '../../fixtures/gateway.js';
import { longText, startPdPair } from '../../fixtures/disagg.js';

/**
 * A client that leaves mid-way. The prefill and decode workers run in separate sim
 * processes so either can be killed; the health check polls rarely, so the
 * gateway still believes in a dead worker and the leg itself must cope.
 */
const pd = startPdPair;

t.test('a client that disconnects aborts the running leg', async (t) => {
  // A slow prefill worker (speed-up 0.05: ~1.5 s for this prompt) so the client can leave during the prefill leg.
  const f = await pd(t, ['--speedup', '0.05']);
  const abort = new AbortController();
  const pending = f.client.completions
    .create({ model: MODEL, prompt: longText('leave-early', 900), max_tokens: 50 }, { signal: abort.signal })
    .catch((e: unknown) => e);
  await eventually(async () => (await f.stats(f.workers[0]!)).running === 1);
  abort.abort();
  await pending;
  await eventually(async () => (await f.stats(f.workers[0]!)).running === 0, 5000);
  const p = await f.stats(f.workers[0]!);
  t.equal(p.generatedTokens, 0, 'the prefill leg was aborted before it finished');
  t.equal(p.kvBlocksUsed, 0, 'and its blocks were freed');
  t.equal((await f.stats(f.workers[1]!)).kvLoads, 0, 'no decode leg was sent');

  // Mid-stream on the decode leg (fast prefill this time: a short prompt above the threshold).
  const stream = await f.client.completions.create({
    model: MODEL,
    prompt: longText('leave-late', 150),
    max_tokens: 5000,
    stream: true,
  });
  for await (const c of stream) if (c.choices[0]) break; // leaves after the first token
  await eventually(async () => {
    const d = await f.stats(f.workers[1]!);
    return d.kvLoads === 1 && d.running === 0;
  }, 5000);
  t.pass('the decode worker stopped generating once the client left');
});
