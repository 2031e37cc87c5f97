import t from 'tap';
import OpenAI from 'openai';
import { request } from 'undici';
import { eventually, fleetConfig, metricValue, MODEL, startGateway, startSim } from '../../../fixtures/gateway.js';

/**
 * The Responses API end to end: the gateway builds the prompt the way vLLM
 * does, so a conversation continued by `previous_response_id` or by its full
 * input follows its cached prefix, and the engine's cached tokens are what the
 * gateway predicted. A stored response's worker is where its follow-ups go.
 */
const EVENTS = ['--kv-events', 'tcp://127.0.0.1:*', '--kv-events-replay', 'tcp://127.0.0.1:*'];
const INSTRUCTIONS = 'You are a meticulous assistant who answers about inference systems. '.repeat(60);

const indexedBlocks = async (adminUrl: string, worker: string) => {
  const body = (await (await request(`${adminUrl}/debug/workers`)).body.json()) as {
    index?: { workers?: Record<string, { index?: { blocks: number } }> };
  };
  return body.index?.workers?.[worker]?.index?.blocks ?? 0;
};

void t.test('a Responses conversation stays on its worker with the predicted cache hits', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 3, ['--speedup', '20', ...EVENTS]);
  const { url, adminUrl } = await startGateway(teardown, fleetConfig(workers, { strategy: 'kv' }));
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const settle = async (worker: string, tokens: number) =>
    eventually(async () => (await indexedBlocks(adminUrl, worker)) >= Math.floor(tokens / 16));

  const one = await client.responses
    .create({ model: MODEL, instructions: INSTRUCTIONS, input: 'What is a KV cache?', max_output_tokens: 8 })
    .withResponse();
  const home = one.response.headers.get('x-kvgate-worker')!;
  t.equal(one.response.headers.get('x-kvgate-strategy'), 'kv');
  t.equal(one.data.usage?.input_tokens_details.cached_tokens, 0, 'the first turn is cold');
  t.ok(one.data.output_text.length > 0, 'the client reads the output text');
  await settle(home, one.data.usage!.input_tokens);

  // Turn two by previous_response_id, streamed: the engine holds the conversation, the gateway pins it there.
  const stream = await client.responses
    .create({
      model: MODEL,
      instructions: INSTRUCTIONS,
      previous_response_id: one.data.id,
      input: 'And why does routing matter?',
      max_output_tokens: 8,
      stream: true,
    })
    .withResponse();
  t.equal(stream.response.headers.get('x-kvgate-worker'), home, 'previous_response_id goes home');
  const predicted2 = Number(stream.response.headers.get('x-kvgate-cached-blocks'));
  let completed: OpenAI.Responses.Response | undefined;
  const types = new Set<string>();
  for await (const ev of stream.data) {
    types.add(ev.type);
    if (ev.type === 'response.completed' || ev.type === 'response.incomplete') completed = ev.response;
  }
  t.ok(types.has('response.output_text.delta') && types.has('response.created'), 'SSE events pass through');
  t.ok(completed, 'the stream ends with the final response');
  const cached2 = completed!.usage!.input_tokens_details.cached_tokens;
  t.ok(predicted2 > 30, `predicted ${predicted2} blocks`);
  t.equal(cached2, predicted2 * 16, `engine cached ${cached2} tokens = the prediction`);
  await settle(home, completed!.usage!.input_tokens);

  // Turn three by full input: no pin, the KV index alone brings it home.
  const text = (r: OpenAI.Responses.Response) =>
    r.output
      .flatMap((o) => (o.type === 'message' ? o.content : []))
      .map((c) => (c.type === 'output_text' ? c.text : ''));
  const three = await client.responses
    .create({
      model: MODEL,
      instructions: INSTRUCTIONS,
      input: [
        { role: 'user', content: 'What is a KV cache?' },
        { role: 'assistant', content: one.data.output_text },
        { role: 'user', content: 'And why does routing matter?' },
        { role: 'assistant', content: text(completed!).join('') },
        { role: 'user', content: 'Thanks. One more question, then.' },
      ],
      max_output_tokens: 8,
    })
    .withResponse();
  t.equal(three.response.headers.get('x-kvgate-worker'), home, 'the full-input turn lands home by its prefix');
  const predicted3 = Number(three.response.headers.get('x-kvgate-cached-blocks'));
  t.ok(predicted3 > predicted2, `predicted ${predicted3} blocks, more than turn two`);
  t.equal(three.data.usage!.input_tokens_details.cached_tokens, predicted3 * 16, 'engine cached = the prediction');
  // The Responses usage shape (JSON and the streamed response.completed) feeds the actual-cached metrics.
  const actual = (predicted2 + predicted3) * 16;
  const seen = await eventually(async () => {
    const text = await (await request(`${url}/metrics`)).body.text();
    const sum = metricValue(text, 'kvgate_actual_cached_tokens_sum', { strategy: 'kv' });
    return sum === actual && metricValue(text, 'kvgate_usage_prompt_tokens_count', { strategy: 'kv' }) === 3;
  }).catch(() => false);
  t.ok(seen, `kvgate_actual_cached_tokens_sum = ${actual} over 3 responses`);

  // The stored response is read back from its own worker.
  const got = await client.responses.retrieve(one.data.id).withResponse();
  t.equal(got.response.headers.get('x-kvgate-worker'), home);
  t.equal(got.data.id, one.data.id);

  const bad = await request(`${url}/v1/responses`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL }),
  });
  t.equal(bad.statusCode, 400);
  t.match(await bad.body.json(), { error: { param: 'input', code: 'missing_required_parameter' } });
});

void t.test('a previous_response_id whose worker is gone gets a clear 4xx', async (t) => {
  const teardown = t.teardown.bind(t);
  const a = await startSim(teardown, 1, ['--speedup', '20']);
  const b = await startSim(teardown, 1, ['--speedup', '20']);
  const workers = [
    { ...a.workers[0]!, worker: 'a' },
    { ...b.workers[0]!, worker: 'b' },
  ];
  const { url } = await startGateway(teardown, fleetConfig(workers, { strategy: 'round-robin' }));
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const one = await client.responses
    .create({ model: MODEL, input: 'Hello there.', max_output_tokens: 4 })
    .withResponse();
  const owner = one.response.headers.get('x-kvgate-worker')!;
  // Round-robin alone would move turn two; the pin keeps it.
  for (let i = 0; i < 3; i++) {
    const next = await client.responses
      .create({ model: MODEL, previous_response_id: one.data.id, input: `Turn ${i}.`, max_output_tokens: 4 })
      .withResponse();
    t.equal(next.response.headers.get('x-kvgate-worker'), owner, `turn ${i + 2} stays on ${owner}`);
  }
  await (owner === 'a' ? a.sim : b.sim).stop();
  const body = JSON.stringify({ model: MODEL, previous_response_id: one.data.id, input: 'Still there?' });
  const gone = await eventually(async () => {
    const r = await request(`${url}/v1/responses`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
    });
    const json = (await r.body.json()) as { error?: { code?: string } };
    return r.statusCode === 400 && json.error?.code === 'response_worker_unavailable' ? json : undefined;
  });
  t.match(gone, {
    error: { type: 'invalid_request_error', param: 'previous_response_id', message: new RegExp(`worker '${owner}'`) },
  });
  const get = await request(`${url}/v1/responses/${one.data.id}`);
  t.equal(get.statusCode, 404);
  t.match(await get.body.json(), { error: { code: 'response_worker_unavailable' } });
});
