import t from 'tap';
import { request } from 'undici';
import { fleetConfig, MODEL, startGateway, startSim } from '../../fixtures/gateway.js';

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details?: { cached_tokens?: number };
}

// A prompt long enough to span many KV blocks, so a cached prefix shows in the usage.
const messages = [
  { role: 'system', content: 'You are a careful assistant. '.repeat(20) },
  { role: 'user', content: 'What is the sum of the first ten prime numbers? Explain.' },
];

t.test('kvgate_requery: rounds on one worker, growing cache, summed usage; refused when disabled', async (t) => {
  const { workers } = await startSim(t.teardown, 2, ['--kv-events', 'tcp://127.0.0.1:*']);
  const on = await startGateway(
    t.teardown,
    fleetConfig(
      workers,
      { strategy: 'kv' },
      { server: { host: '127.0.0.1', requery: { enabled: true, maxRounds: 4 } } },
    ),
  );
  const off = await startGateway(t.teardown, fleetConfig(workers, { strategy: 'kv' }));
  const post = (url: string, body: unknown, path = '/v1/chat/completions') =>
    request(`${url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });

  await t.test('refused with a clear 400 unless the config enables it', async (t) => {
    const res = await post(off.url, { model: MODEL, messages, max_tokens: 8, kvgate_requery: { rounds: 2 } });
    t.equal(res.statusCode, 400);
    const body = (await res.body.json()) as { error: Record<string, unknown> };
    t.equal(body.error.type, 'invalid_request_error');
    t.equal(body.error.code, 'requery_disabled');
    t.equal(body.error.param, 'kvgate_requery');
    t.match(body.error.message, /server\.requery\.enabled/);
  });

  await t.test('bad asks are 400s naming the field', async (t) => {
    for (const [ask, code] of [
      [{ rounds: 0 }, 'invalid_value'],
      [{ rounds: 5 }, 'invalid_value'],
      [{ rounds: 2, prompt: 3 }, 'invalid_type'],
      [{ rounds: 2, extra: true }, 'invalid_value'],
      ['twice', 'invalid_type'],
    ] as const) {
      const res = await post(on.url, { model: MODEL, messages, max_tokens: 8, kvgate_requery: ask });
      t.equal(res.statusCode, 400, JSON.stringify(ask));
      const body = (await res.body.json()) as { error: Record<string, unknown> };
      t.equal(body.error.code, code, JSON.stringify(ask));
      t.equal(body.error.param, 'kvgate_requery');
    }
    const res = await post(
      on.url,
      { model: MODEL, prompt: 'hi', max_tokens: 8, kvgate_requery: { rounds: 2 } },
      '/v1/completions',
    );
    t.equal(res.statusCode, 400, 'completions are not supported');
    await res.body.dump();
  });

  await t.test('three rounds: one worker, cached tokens grow, usage summed and visible', async (t) => {
    const res = await post(on.url, {
      model: MODEL,
      messages,
      max_tokens: 24,
      kvgate_requery: { rounds: 3, prompt: 'Reconsider your answer and correct any mistake.' },
    });
    t.equal(res.statusCode, 200);
    t.equal(res.headers['x-kvgate-requery-rounds'], '3');
    t.ok(
      workers.some((w) => w.worker === res.headers['x-kvgate-worker']),
      'a worker is named',
    );
    const body = (await res.body.json()) as {
      choices: { message: { content: string } }[];
      usage: Usage;
      kvgate_requery: { rounds: number; usage: Usage[] };
    };
    t.equal(typeof body.choices[0]!.message.content, 'string');
    const rounds = body.kvgate_requery.usage;
    t.equal(rounds.length, 3);
    for (let i = 1; i < rounds.length; i++) {
      t.ok(rounds[i]!.prompt_tokens > rounds[i - 1]!.prompt_tokens, `round ${i + 1}'s prompt extends round ${i}'s`);
      const cached = rounds[i]!.prompt_tokens_details?.cached_tokens ?? 0;
      t.ok(
        cached > (rounds[i - 1]!.prompt_tokens_details?.cached_tokens ?? 0),
        `round ${i + 1} finds more cached (${cached})`,
      );
      // Everything of the previous round's prompt, block-aligned, is still on the worker.
      t.ok(cached >= rounds[i - 1]!.prompt_tokens - 16, `round ${i + 1} reuses round ${i}'s prompt`);
    }
    for (const k of ['prompt_tokens', 'completion_tokens', 'total_tokens'] as const)
      t.equal(
        body.usage[k],
        rounds.reduce((a, r) => a + r[k], 0),
        `usage.${k} is the rounds' sum`,
      );
    t.equal(
      body.usage.prompt_tokens_details?.cached_tokens,
      rounds.reduce((a, r) => a + (r.prompt_tokens_details?.cached_tokens ?? 0), 0),
    );
  });

  await t.test('streaming: the last round is streamed, its usage chunk carries the sum', async (t) => {
    const res = await post(on.url, {
      model: MODEL,
      messages,
      max_tokens: 16,
      stream: true,
      stream_options: { include_usage: true },
      kvgate_requery: { rounds: 2 },
    });
    t.equal(res.statusCode, 200);
    t.match(res.headers['content-type'], /text\/event-stream/);
    t.equal(res.headers['x-kvgate-requery-rounds'], '2');
    const text = await res.body.text();
    const chunks = text
      .split('\n\n')
      .filter((e) => e.startsWith('data: ') && e !== 'data: [DONE]')
      .map((e) => JSON.parse(e.slice(6)) as { usage?: Usage | null; choices: unknown[] });
    t.ok(text.trimEnd().endsWith('data: [DONE]'), 'the stream ends as the engine ended it');
    t.ok(
      chunks.some((c) => c.choices.length > 0),
      'content chunks',
    );
    const usage = chunks.find((c) => c.usage)?.usage;
    t.ok(usage, 'a usage chunk');
    const single = await post(on.url, { model: MODEL, messages, max_tokens: 16 });
    const one = ((await single.body.json()) as { usage: Usage }).usage;
    t.ok(usage!.prompt_tokens > 2 * one.prompt_tokens, 'two rounds of prompt tokens, the second longer');
    t.equal(usage!.total_tokens, usage!.prompt_tokens + usage!.completion_tokens);
  });
});
