import t from 'tap';
import OpenAI from 'openai';
import { offsetEndpoint } from '../../../bench/sim/cli.js';
import { startCli, QWEN3_TOKENIZER_DIR, type LogLine } from '../../fixtures/processes.js';

const MODEL = 'Qwen/Qwen3-0.6B';

/** One `kvgate sim` process for the client tests (KV events on, so the ready line carries them). */
const sim = startCli([
  'sim',
  '--tokenizer',
  QWEN3_TOKENIZER_DIR,
  '--speedup',
  '10',
  '--kv-events',
  'tcp://127.0.0.1:*',
  '--kv-events-replay',
  'tcp://127.0.0.1:*',
]);
t.teardown(() => sim.stop());
const [ready] = await sim.waitFor('sim worker ready');
const client = new OpenAI({ baseURL: `${ready!.url as string}/v1`, apiKey: 'unused', maxRetries: 0 });

t.test('the ready line has every field the conventions promise', async (t) => {
  t.match(ready, {
    worker: 'sim-0',
    url: /^http:\/\/127\.0\.0\.1:\d+$/,
    kvEvents: /^tcp:\/\/127\.0\.0\.1:\d+$/,
    kvReplay: /^tcp:\/\/127\.0\.0\.1:\d+$/,
    blockSize: 16,
    kvBlocks: 8192,
    model: MODEL,
  });
});

t.test('openai client: completions, non-streaming and streaming with include_usage', async (t) => {
  const prompt = 'Tell me about the KV cache. '.repeat(20);
  const first = await client.completions.create({ model: MODEL, prompt, max_tokens: 5 });
  t.equal(first.choices[0]!.finish_reason, 'length');
  t.ok(first.choices[0]!.text.length > 0);
  t.equal(first.usage!.completion_tokens, 5);
  const stream = await client.completions.create({
    model: MODEL,
    prompt,
    max_tokens: 4,
    stream: true,
    stream_options: { include_usage: true },
  });
  const texts: string[] = [];
  let usage: OpenAI.CompletionUsage | null | undefined;
  for await (const chunk of stream) {
    if (chunk.choices.length > 0) texts.push(chunk.choices[0]!.text);
    if (chunk.usage) usage = chunk.usage;
  }
  t.equal(texts.length, 4, 'one chunk per token');
  t.equal(usage!.completion_tokens, 4);
  t.equal(usage!.prompt_tokens, first.usage!.prompt_tokens);
  t.ok(usage!.prompt_tokens_details!.cached_tokens! > 0, 'the repeat hits the prefix cache');
  t.equal(usage!.prompt_tokens_details!.cached_tokens! % 16, 0, 'in whole blocks');
});

t.test('openai client: chat, non-streaming and streaming, cached tokens on a repeat', async (t) => {
  const messages: OpenAI.ChatCompletionMessageParam[] = [
    { role: 'system', content: 'You are a helpful assistant. '.repeat(10) },
    { role: 'user', content: 'What is prefix caching?' },
  ];
  const cold = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 6 });
  t.equal(cold.object, 'chat.completion');
  t.equal(cold.choices[0]!.message.role, 'assistant');
  t.equal(cold.choices[0]!.finish_reason, 'length');
  t.equal(cold.usage!.completion_tokens, 6);
  t.equal(cold.usage!.prompt_tokens_details!.cached_tokens, 0);
  const stream = await client.chat.completions.create({
    model: MODEL,
    messages,
    max_completion_tokens: 3,
    stream: true,
    stream_options: { include_usage: true },
  });
  const deltas: OpenAI.ChatCompletionChunk['choices'][number]['delta'][] = [];
  let usage: OpenAI.CompletionUsage | null | undefined;
  let finish: string | null = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      deltas.push(c.delta);
      finish = c.finish_reason ?? finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  t.equal(deltas[0]!.role, 'assistant');
  t.equal(deltas.filter((d) => d.content).length, 3);
  t.equal(finish, 'length');
  t.equal(usage!.prompt_tokens, cold.usage!.prompt_tokens);
  t.ok(usage!.prompt_tokens_details!.cached_tokens! > 0);
  const noCap = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }] });
  t.equal(noCap.choices[0]!.finish_reason, 'stop', 'without max_tokens a simulated EOS ends the answer');
});

t.test('openai client surfaces vLLM errors', async (t) => {
  const status = (p: Promise<unknown>) =>
    p.then(
      () => 200,
      (err: unknown) => (err instanceof OpenAI.APIError ? err.status : -1),
    );
  t.equal(await status(client.completions.create({ model: MODEL, prompt: 'x', n: 2 })), 400);
  t.equal(await status(client.completions.create({ model: 'other', prompt: 'x' })), 404);
});

t.test('--workers 2: two ready lines, two ports; SIGTERM exits 0', async (t) => {
  const p = startCli(['sim', '--workers', '2', '--id-prefix', 'w', '--kv-events', 'tcp://127.0.0.1:*']);
  t.teardown(() => p.stop());
  const lines: LogLine[] = await p.waitFor('sim worker ready', 2);
  t.same(
    lines.map((l) => l.worker),
    ['w0', 'w1'],
  );
  t.not(lines[0]!.url, lines[1]!.url);
  t.not(lines[0]!.kvEvents, lines[1]!.kvEvents);
  for (const l of lines) t.equal((await fetch(`${l.url as string}/health`)).status, 200);
  t.equal(await p.stop('SIGTERM'), 0);
});

t.test('bad flags: one line on stderr, exit 2', async (t) => {
  for (const args of [
    ['--workers', 'x'],
    ['--nope'],
    ['--kv-events-format', 'old'],
    ['--kv-events', 'localhost:5557'],
    ['--stream-interval', '0'],
  ]) {
    const p = startCli(['sim', ...args]);
    t.equal(await p.exited, 2, args.join(' '));
    t.equal(p.text.length, 1, p.text.join('\n'));
    t.match(p.text[0], /^kvgate sim: /);
  }
});

t.test('worker i offsets KV event endpoints the way vLLM offsets DP ranks', async (t) => {
  t.equal(offsetEndpoint('tcp://*:5557', 0), 'tcp://*:5557');
  t.equal(offsetEndpoint('tcp://*:5557', 3), 'tcp://*:5560');
  t.equal(offsetEndpoint('tcp://127.0.0.1:*', 2), 'tcp://127.0.0.1:*', 'a free port stays free');
  t.equal(offsetEndpoint('inproc://kv', 1), 'inproc://kv_dp1');
});
