import t from 'tap';
import OpenAI from 'openai';
import { request } from 'undici';
import { eventually, fleetConfig, metricValue, MODEL, startGateway, startSim } from '../../fixtures/gateway.js';

/** The gateway in front of real simulated workers, driven by the official OpenAI client. */
t.test('through the gateway with the openai client', async (t) => {
  const teardown = t.teardown.bind(t);
  const { workers } = await startSim(teardown, 3, ['--speedup', '20']);
  const rr = await startGateway(teardown, fleetConfig(workers, { strategy: 'round-robin' }));
  const client = new OpenAI({ baseURL: `${rr.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const messages = [{ role: 'user' as const, content: 'Tell me about KV caches.' }];

  t.test('chat, non-streaming', async (t) => {
    const { data, response } = await client.chat.completions
      .create({ model: MODEL, messages, max_tokens: 12 })
      .withResponse();
    t.equal(data.object, 'chat.completion');
    t.equal(data.usage?.completion_tokens, 12);
    t.ok((data.usage?.prompt_tokens ?? 0) > 5);
    t.ok(data.choices[0]!.message.content!.length > 0);
    t.match(response.headers.get('x-kvgate-worker'), /^sim-\d$/);
    t.equal(response.headers.get('x-kvgate-strategy'), 'round-robin');
  });

  t.test('chat, streaming with usage', async (t) => {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages,
      max_tokens: 10,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage;
    let chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      text += chunk.choices[0]?.delta.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    t.ok(chunks >= 10, `${chunks} chunks`);
    t.ok(text.length > 0);
    t.equal(usage?.completion_tokens, 10);
  });

  t.test('completions, both ways', async (t) => {
    const c = await client.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 7 });
    t.equal(c.usage?.completion_tokens, 7);
    const s = await client.completions.create({ model: MODEL, prompt: [1, 2, 3, 4, 5], max_tokens: 5, stream: true });
    let n = 0;
    for await (const chunk of s) n += chunk.choices.length > 0 && chunk.choices[0]!.text !== '' ? 1 : 0;
    t.equal(n, 5);
  });

  t.test('round-robin spreads evenly', async (t) => {
    const counts = new Map<string, number>();
    for (let i = 0; i < 9; i++) {
      const { response } = await client.completions
        .create({ model: MODEL, prompt: `request ${i}`, max_tokens: 1 })
        .withResponse();
      const w = response.headers.get('x-kvgate-worker')!;
      counts.set(w, (counts.get(w) ?? 0) + 1);
    }
    t.same([...counts.values()], [3, 3, 3], JSON.stringify([...counts]));
  });

  t.test('session pins a session to one worker', async (t) => {
    const session = await startGateway(teardown, fleetConfig(workers, { strategy: 'session' }));
    const sc = new OpenAI({ baseURL: `${session.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const seen = new Set<string>();
    for (let i = 0; i < 6; i++) {
      const { response } = await sc.completions
        .create(
          { model: MODEL, prompt: `turn ${i}`, max_tokens: 1 },
          { headers: { 'x-session-id': 'conversation-42' } },
        )
        .withResponse();
      seen.add(response.headers.get('x-kvgate-worker')!);
      t.equal(response.headers.get('x-kvgate-strategy'), 'session');
    }
    t.equal(seen.size, 1, 'one session, one worker');
    const spread = new Set<string>();
    for (let i = 0; i < 24; i++) {
      const { response } = await sc.completions
        .create({ model: MODEL, prompt: 'x', max_tokens: 1 }, { headers: { 'x-session-id': `user-${i}` } })
        .withResponse();
      spread.add(response.headers.get('x-kvgate-worker')!);
    }
    t.ok(spread.size >= 2, `sessions spread over ${spread.size} workers`);
  });

  t.test('a client that disconnects mid-stream aborts the upstream request', async (t) => {
    const running = async () => {
      let total = 0;
      for (const w of workers)
        total += metricValue(await (await request(`${w.url}/metrics`)).body.text(), 'vllm:num_requests_running') ?? 0;
      return total;
    };
    await eventually(async () => (await running()) === 0);
    const abort = new AbortController();
    const stream = await client.completions.create(
      { model: MODEL, prompt: 'a very long story', max_tokens: 30_000, stream: true },
      { signal: abort.signal },
    );
    const it = stream[Symbol.asyncIterator]();
    await it.next();
    t.equal(await running(), 1, 'the worker is generating');
    abort.abort();
    await eventually(async () => (await running()) === 0, 5000);
    const gw = await (await request(`${rr.url}/metrics`)).body.text();
    await eventually(async () => {
      const text = await (await request(`${rr.url}/metrics`)).body.text();
      return workers.every((w) => metricValue(text, 'kvgate_inflight_requests', { worker: w.worker }) === 0);
    }, 5000);
    t.match(gw, /kvgate_upstream_errors_total\{worker="sim-\d",kind="client_abort"\} 1/);
  });
});
