import t from 'tap';
import { request } from 'undici';
import { fleetConfig, MODEL, startGateway, startSim } from '../../../fixtures/gateway.js';

/**
 * `/tokenize` and `/detokenize` answered by the gateway with the real Qwen3
 * tokenizer give the engine's tokens (the simulated worker tokenizes as vLLM
 * does); without a local tokenizer a worker answers. The header says who.
 */
const post = async (url: string, path: string, body: unknown) => {
  const res = await request(`${url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return {
    status: res.statusCode,
    by: res.headers['x-kvgate-answered-by'],
    body: (await res.body.json()) as Record<string, unknown>,
  };
};

void t.test('the gateway answers tokenize/detokenize as the engine does, and falls back to a worker', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 1);
  const base = fleetConfig(workers);
  const models = base.models as Record<string, Record<string, unknown>>;
  const own = await startGateway(teardown, { ...base, models: { [MODEL]: { ...models[MODEL], maxModelLen: 40960 } } });
  const remote = await startGateway(teardown, {
    ...base,
    models: { [MODEL]: { tokenizer: { type: 'remote' }, blockSize: 16 } },
  });
  const engine = workers[0]!.url;

  const requests = [
    { model: MODEL, prompt: 'The KV cache holds attention keys and values.', return_token_strs: true },
    {
      model: MODEL,
      messages: [
        { role: 'system', content: 'You are terse.' },
        {
          role: 'user',
          content: [
            { type: 'text', text: 'What is' },
            { type: 'text', text: 'a KV cache?' },
          ],
        },
      ],
      tools: [{ type: 'function', function: { name: 'lookup', parameters: { type: 'object' } } }],
    },
    {
      model: MODEL,
      messages: [
        { role: 'user', content: 'Hi' },
        { role: 'assistant', content: 'Hel' },
      ],
      add_generation_prompt: false,
      continue_final_message: true,
    },
  ];
  for (const req of requests) {
    const [mine, theirs] = await Promise.all([post(own.url, '/tokenize', req), post(engine, '/tokenize', req)]);
    t.equal(mine.status, 200);
    t.equal(mine.by, 'gateway', 'answered by the gateway');
    t.same(mine.body, theirs.body, `identical to the engine's answer: ${'prompt' in req ? 'prompt' : 'messages'}`);
    const back = await post(own.url, '/detokenize', { model: MODEL, tokens: mine.body.tokens });
    const engineBack = await post(engine, '/detokenize', { model: MODEL, tokens: mine.body.tokens });
    t.equal(back.by, 'gateway');
    t.same(back.body, engineBack.body, 'detokenize agrees with the engine');
    if ('prompt' in req) t.equal(back.body.prompt, req.prompt, 'and round-trips the prompt');
  }

  const routed = await post(remote.url, '/tokenize', requests[1]);
  t.equal(routed.status, 200);
  t.equal(routed.by, 'worker', 'no local tokenizer: a worker answers');
  t.same(routed.body, (await post(own.url, '/tokenize', requests[1])).body);
  const back = await post(remote.url, '/detokenize', { model: MODEL, tokens: [9707] });
  t.same([back.by, back.body], ['worker', { prompt: 'Hello' }]);

  const unknown = await post(own.url, '/tokenize', { model: 'no/such-model', prompt: 'x' });
  t.equal(unknown.status, 404);
  t.match(unknown.body, { error: { code: 'model_not_found', param: 'model' } });
  const bad = await post(own.url, '/detokenize', { model: MODEL, tokens: [1, 'two'] });
  t.equal(bad.status, 400);
  t.match(bad.body, { error: { type: 'invalid_request_error', param: 'tokens' } });
});
