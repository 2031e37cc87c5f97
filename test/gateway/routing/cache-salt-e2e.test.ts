import t from 'tap';
import { request } from 'undici';
import { eventually, fleetConfig, MODEL, startGateway, startSim } from '../../fixtures/gateway.js';

/**
 * cache_salt end to end: the simulator keys a salted request's blocks by its
 * salt (as vLLM does, through the first block's extra keys), its events carry
 * the salt, and the gateway predicts exactly what the engine then reuses: a
 * salted conversation hits its own blocks, another salt or no salt hits none.
 */
const EVENTS = ['--kv-events', 'tcp://127.0.0.1:*', '--kv-events-replay', 'tcp://127.0.0.1:*'];
const SYSTEM = 'You are a careful assistant for a private tenant. '.repeat(40);

interface Reply {
  status: number;
  predicted: number;
  cached: number;
  promptTokens: number;
  content: string;
}

t.test('a salted conversation hits only its own blocks, predicted as the engine reuses them', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 1, ['--speedup', '20', ...EVENTS]);
  const { url, adminUrl } = await startGateway(teardown, fleetConfig(workers, { strategy: 'kv' }));
  const worker = workers[0]!.worker;
  const indexed = async () => {
    const body = (await (await request(`${adminUrl}/debug/workers`)).body.json()) as {
      index?: { workers?: Record<string, { index?: { blocks: number } }> };
    };
    return body.index?.workers?.[worker]?.index?.blocks ?? 0;
  };
  const post = async (path: string, body: Record<string, unknown>): Promise<Reply> => {
    const r = await request(`${url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, max_tokens: 4, ...body }),
    });
    const json = (await r.body.json()) as {
      usage?: { prompt_tokens: number; prompt_tokens_details?: { cached_tokens: number } };
      choices?: { message?: { content: string } }[];
    };
    return {
      status: r.statusCode,
      predicted: Number(r.headers['x-kvgate-cached-blocks'] ?? 0),
      cached: json.usage?.prompt_tokens_details?.cached_tokens ?? -1,
      promptTokens: json.usage?.prompt_tokens ?? 0,
      content: json.choices?.[0]?.message?.content ?? '',
    };
  };
  const settle = async (r: Reply) => {
    // Wait until the engine's blocks for this prompt are indexed, so the next prediction is not racing the events.
    await eventually(async () => (await indexed()) >= Math.floor(r.promptTokens / 16), 20_000, 100);
  };

  let messages: { role: string; content: string }[] = [{ role: 'system', content: SYSTEM }];
  for (let turn = 1; turn <= 3; turn++) {
    messages = [...messages, { role: 'user', content: `Turn ${turn}: summarise the ledger.` }];
    const r = await post('/v1/chat/completions', { messages, cache_salt: 'tenant-a' });
    t.equal(r.status, 200);
    if (turn > 1) {
      t.ok(r.predicted > 10, `turn ${turn}: ${r.predicted} blocks predicted`);
      t.equal(r.predicted, r.cached / 16, `turn ${turn}: predicted blocks = engine cached tokens / 16`);
    }
    messages = [...messages, { role: 'assistant', content: r.content }];
    await settle(r);
  }

  const probe = [...messages, { role: 'user', content: 'And the totals?' }];
  const other = await post('/v1/chat/completions', { messages: probe, cache_salt: 'tenant-b' });
  t.equal(other.predicted, 0, 'another salt: nothing predicted');
  t.equal(other.cached, 0, 'another salt: the engine reuses nothing');
  await settle(other);
  const none = await post('/v1/chat/completions', { messages: probe });
  t.equal(none.predicted, 0, 'no salt: nothing predicted');
  t.equal(none.cached, 0, 'no salt: the engine reuses nothing');

  // Completions carry the salt too; a salted prompt never matches the unsalted blocks just stored.
  const prompt = `Ledger export. ${'row, amount, date; '.repeat(60)}`;
  const plain = await post('/v1/completions', { prompt });
  await settle(plain);
  const salted = await post('/v1/completions', { prompt, cache_salt: 'tenant-a' });
  t.equal(salted.predicted, 0, 'salted completion: no match with unsalted blocks');
  t.equal(salted.cached, 0);
  await settle(salted);
  const again = await post('/v1/completions', { prompt, cache_salt: 'tenant-a' });
  t.ok(again.predicted > 10, `same salt again: ${again.predicted} blocks predicted`);
  t.equal(again.predicted, again.cached / 16, 'predicted blocks = engine cached tokens / 16');

  const bad = await request(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, prompt: 'x', cache_salt: '' }),
  });
  t.equal(bad.statusCode, 400, 'an empty salt is refused as vLLM refuses it');
  t.match(await bad.body.json(), { error: { param: 'cache_salt' } });
});
