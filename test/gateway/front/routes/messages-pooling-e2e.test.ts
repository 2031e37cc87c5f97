import t from 'tap';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { request } from 'undici';
import { eventually, fleetConfig, metricValue, MODEL, startGateway, startSim } from '../../../fixtures/gateway.js';

/**
 * The Anthropic Messages route (official client, streaming included) follows
 * its cached prefix like chat does; the pooling routes spread by load.
 */
const EVENTS = ['--kv-events', 'tcp://127.0.0.1:*', '--kv-events-replay', 'tcp://127.0.0.1:*'];
const SYSTEM = 'You are a careful assistant who explains caching in inference servers. '.repeat(60);

const indexedBlocks = async (adminUrl: string, worker: string) => {
  const body = (await (await request(`${adminUrl}/debug/workers`)).body.json()) as {
    index?: { workers?: Record<string, { index?: { blocks: number } }> };
  };
  return body.index?.workers?.[worker]?.index?.blocks ?? 0;
};

void t.test('a Messages conversation stays on its worker with the predicted cache hits', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 3, ['--speedup', '20', ...EVENTS]);
  const { url, adminUrl } = await startGateway(teardown, fleetConfig(workers, { strategy: 'kv' }));
  const client = new Anthropic({ baseURL: url, apiKey: 'unused', maxRetries: 0 });

  const first = { role: 'user' as const, content: 'What is a KV cache?' };
  const one = await client.messages
    .create({ model: MODEL, system: SYSTEM, max_tokens: 8, messages: [first] })
    .withResponse();
  const home = one.response.headers.get('x-kvgate-worker')!;
  t.equal(one.response.headers.get('x-kvgate-strategy'), 'kv');
  t.equal(one.data.usage.cache_read_input_tokens, 0, 'the first turn is cold');
  const reply = one.data.content.map((b) => (b.type === 'text' ? b.text : '')).join('');
  t.ok(reply.length > 0);
  await eventually(async () => (await indexedBlocks(adminUrl, home)) >= Math.floor(one.data.usage.input_tokens / 16));

  const two = await client.messages
    .create({
      model: MODEL,
      system: [{ type: 'text', text: SYSTEM }],
      max_tokens: 8,
      stream: true,
      messages: [
        first,
        { role: 'assistant', content: [{ type: 'text', text: reply }] },
        { role: 'user', content: 'And why does routing matter?' },
      ],
    })
    .withResponse();
  t.equal(two.response.headers.get('x-kvgate-worker'), home, 'the second turn lands home');
  const predicted = Number(two.response.headers.get('x-kvgate-cached-blocks'));
  let cached: number | null | undefined;
  let text = '';
  const types = new Set<string>();
  for await (const ev of two.data) {
    types.add(ev.type);
    if (ev.type === 'content_block_delta' && ev.delta.type === 'text_delta') text += ev.delta.text;
    if (ev.type === 'message_delta') cached = ev.usage.cache_read_input_tokens;
  }
  t.same(
    [...types].sort(),
    [
      'content_block_delta',
      'content_block_start',
      'content_block_stop',
      'message_delta',
      'message_start',
      'message_stop',
    ],
    'the Messages streaming events pass through',
  );
  t.ok(text.length > 0);
  t.ok(predicted > 30, `predicted ${predicted} blocks`);
  t.equal(cached, predicted * 16, `engine cached ${cached} tokens = the prediction`);
  // Messages usage (input_tokens, cache_read_input_tokens; JSON and message_delta) feeds the actual-cached metrics.
  const seen = await eventually(async () => {
    const text = await (await request(`${url}/metrics`)).body.text();
    const sum = metricValue(text, 'kvgate_actual_cached_tokens_sum', { strategy: 'kv' });
    return sum === cached && metricValue(text, 'kvgate_usage_prompt_tokens_count', { strategy: 'kv' }) === 2;
  }).catch(() => false);
  t.ok(seen, `kvgate_actual_cached_tokens_sum = ${cached} over 2 messages`);

  const bad = await request(`${url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [first] }),
  });
  t.equal(bad.statusCode, 400);
  t.match(await bad.body.json(), { error: { param: 'max_tokens' } });
});

void t.test('an embeddings burst spreads by load; score and rerank are routed with the model check', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 3, ['--speedup', '1']);
  // One session header would send every request to one worker under `session`; pooling routes go by load instead.
  const { url } = await startGateway(teardown, fleetConfig(workers, { strategy: 'session' }));
  const client = new OpenAI({
    baseURL: `${url}/v1`,
    apiKey: 'unused',
    maxRetries: 0,
    defaultHeaders: { 'x-session-id': 'one-client' },
  });
  const input = 'The same text embedded over and over. '.repeat(100);
  const answers = await Promise.all(
    Array.from({ length: 24 }, () => client.embeddings.create({ model: MODEL, input }).withResponse()),
  );
  const counts = new Map<string, number>();
  for (const a of answers) {
    t.equal(a.response.headers.get('x-kvgate-strategy'), 'least-load');
    t.equal(a.data.data[0]!.embedding.length, 8);
    const w = a.response.headers.get('x-kvgate-worker')!;
    counts.set(w, (counts.get(w) ?? 0) + 1);
  }
  t.equal(counts.size, 3, `every worker took a share: ${JSON.stringify([...counts])}`);
  for (const [w, n] of counts) t.ok(n >= 4, `${w} took ${n} of 24`);

  const score = await request(`${url}/score`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, text_1: 'kv cache', text_2: ['prefix caching', 'weather'] }),
  });
  t.equal(score.statusCode, 200);
  t.match(await score.body.json(), { object: 'list', data: [{ object: 'score' }, { object: 'score' }] });
  const rerank = await request(`${url}/v1/rerank`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, query: 'kv cache', documents: ['prefix caching', 'weather'] }),
  });
  t.equal(rerank.statusCode, 200);
  t.match(await rerank.body.json(), { results: [{ relevance_score: Number }, { relevance_score: Number }] });
  const unknown = await request(`${url}/v1/embeddings`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'nope', input: 'x' }),
  });
  t.equal(unknown.statusCode, 404);
  t.match(await unknown.body.json(), { error: { code: 'model_not_found' } });

  const metrics = await (await request(`${url}/metrics`)).body.text();
  t.equal(metricValue(metrics, 'kvgate_requests_total', { route: 'embeddings', status: '200' }) !== undefined, true);
});
