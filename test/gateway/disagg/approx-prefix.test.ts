import t from 'tap';
import OpenAI from 'openai';
import { request } from 'undici';
import { MODEL, startGateway, startSim } from '../../fixtures/gateway.js';
import { longText, pdConfig } from '../../fixtures/disagg.js';

interface DryLeg {
  worker: string;
  predictedCachedBlocks?: number;
}

/**
 * `approx-prefix` learns from routing decisions only (`onRouted`), so on P/D
 * traffic it must hear of both legs: the first turn of a conversation,
 * disaggregated, teaches it that the prefill worker and the decode worker hold
 * the prompt, and the second turn is predicted cached on that decode worker:
 * too little uncached prefill for a second leg, served there whole.
 */
void t.test('approx-prefix predicts overlap on the second turn of a P/D conversation', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 3, ['--speedup', '10', '--role', 'prefill,decode,decode']);
  const { url, adminUrl } = await startGateway(
    teardown,
    pdConfig(workers, ['prefill', 'decode', 'decode'], { minUncachedTokens: 256 }, { strategy: 'approx-prefix' }),
  );
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 20_000 });
  const dryRoute = async (messages: unknown) =>
    (
      (await (
        await request(`${adminUrl}/debug/route`, { method: 'POST', body: JSON.stringify({ model: MODEL, messages }) })
      ).body.json()) as { disaggregation: { path: string; prefill: DryLeg | null; aggregated: DryLeg } }
    ).disaggregation;

  const first = [{ role: 'user' as const, content: longText('conversation', 800) }];
  const before = await dryRoute(first);
  t.equal(before.path, 'disaggregated');
  t.equal(before.aggregated.predictedCachedBlocks ?? 0, 0, 'nothing known yet');

  const one = await client.chat.completions.create({ model: MODEL, messages: first, max_tokens: 6 }).withResponse();
  t.equal(one.response.headers.get('x-kvgate-disagg'), 'disaggregated');
  const decode = /^prefill=sim-0,decode=(sim-[12])$/.exec(one.response.headers.get('x-kvgate-worker') ?? '')?.[1];
  t.ok(decode, `first turn: ${one.response.headers.get('x-kvgate-worker')}`);

  const second = [
    ...first,
    { role: 'assistant' as const, content: one.data.choices[0]!.message.content ?? '' },
    { role: 'user' as const, content: 'Go on, please.' },
  ];
  const dry = await dryRoute(second);
  t.equal(dry.aggregated.worker, decode, 'the decode worker of the first turn is the best place');
  t.ok((dry.aggregated.predictedCachedBlocks ?? 0) > 40, `decode leg learnt: ${dry.aggregated.predictedCachedBlocks}`);

  // A follow-up long enough for a second leg: its prefill worker is predicted to hold the first turn too.
  const long = await dryRoute([...second.slice(0, 2), { role: 'user', content: longText('follow-up', 400) }]);
  t.equal(long.path, 'disaggregated');
  t.ok((long.prefill?.predictedCachedBlocks ?? 0) > 40, `prefill leg learnt: ${long.prefill?.predictedCachedBlocks}`);

  const two = await client.chat.completions.create({ model: MODEL, messages: second, max_tokens: 4 }).withResponse();
  t.equal(two.response.headers.get('x-kvgate-disagg'), 'aggregated', 'little uncached prefill: no second leg');
  t.equal(two.response.headers.get('x-kvgate-worker'), decode);
  t.ok(Number(two.response.headers.get('x-kvgate-cached-blocks')) > 40, 'predicted cached there');
  const cached = two.data.usage?.prompt_tokens_details?.cached_tokens ?? 0;
  t.ok(cached > 600, `the engine found ${cached} of ${two.data.usage?.prompt_tokens} prompt tokens cached`);
});
