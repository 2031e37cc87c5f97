import t, { type Test } from 'tap';
import { request } from 'node:http';
import { SimTokenizer } from '../../../bench/sim/text.js';
import { startSimWorker, type SimWorker } from '../../../bench/sim/worker.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';

const tokenizer = await SimTokenizer.load(QWEN3_TOKENIZER_DIR);
const w: SimWorker = await startSimWorker({ tokenizer, maxModelLen: 2048, timing: { speedup: 10 } });
t.teardown(() => w.close());

async function post(
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: any; headers: Headers }> {
  const res = await fetch(`${w.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null, headers: res.headers };
}

function isVllmError(t: Test, json: any, code: number, type: string) {
  t.match(json, { error: { message: String, type, code } }, `vLLM ErrorResponse ${code} ${type}`);
  t.ok('param' in json.error);
}

t.test('GET /health: 200 with an empty body', async (t) => {
  const res = await fetch(`${w.url}/health`);
  t.equal(res.status, 200);
  t.equal(await res.text(), '');
});

t.test('GET /v1/models: vLLM model card with max_model_len', async (t) => {
  const json: any = await (await fetch(`${w.url}/v1/models`)).json();
  t.match(json, {
    object: 'list',
    data: [{ id: 'Qwen/Qwen3-0.6B', object: 'model', owned_by: 'vllm', root: 'Qwen/Qwen3-0.6B', max_model_len: 2048 }],
  });
});

t.test('POST /tokenize, prompt and messages forms; /detokenize inverts', async (t) => {
  const p = await post('/tokenize', { prompt: 'Hello world', return_token_strs: true });
  t.same(p.json, { count: 2, max_model_len: 2048, tokens: [9707, 1879], token_strs: ['Hello', 'Ġworld'] });
  const m = await post('/tokenize', { model: 'Qwen/Qwen3-0.6B', messages: [{ role: 'user', content: 'hi' }] });
  t.equal(m.status, 200);
  t.same(
    m.json.tokens,
    [151644, 872, 198, 6023, 151645, 198, 151644, 77091, 198],
    '<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n',
  );
  t.equal(m.json.count, 9);
  t.equal(m.json.token_strs, null);
  const d = await post('/detokenize', { tokens: [9707, 1879] });
  t.same(d.json, { prompt: 'Hello world' });
  const both = await post('/tokenize', {
    messages: [{ role: 'user', content: 'hi' }],
    add_generation_prompt: true,
    continue_final_message: true,
  });
  isVllmError(t, both.json, 400, 'BadRequestError');
});

t.test('completions: string, token ids, one-element lists; X-Request-Id echoed', async (t) => {
  for (const prompt of ['Hello world', [9707, 1879], ['Hello world'], [[9707, 1879]]]) {
    const r = await post(
      '/v1/completions',
      { model: 'Qwen/Qwen3-0.6B', prompt, max_tokens: 3 },
      { 'x-request-id': 'req-7' },
    );
    t.equal(r.status, 200);
    t.equal(r.headers.get('x-request-id'), 'req-7');
    t.match(r.json, {
      id: /^cmpl-/,
      object: 'text_completion',
      choices: [{ index: 0, text: String, finish_reason: 'length' }],
    });
    t.same(r.json.usage, {
      prompt_tokens: 2,
      total_tokens: 5,
      completion_tokens: 3,
      prompt_tokens_details: { cached_tokens: 0 },
    });
  }
  const dflt = await post('/v1/completions', { prompt: 'Hi' });
  t.equal(dflt.json.usage.completion_tokens, 16, 'max_tokens defaults to 16');
});

t.test('bad requests get vLLM error bodies', async (t) => {
  const badJson = await post('/v1/completions', '{"prompt": ');
  t.equal(badJson.status, 400);
  isVllmError(t, badJson.json, 400, 'BadRequestError');
  const model = await post('/v1/chat/completions', { model: 'nope', messages: [{ role: 'user', content: 'x' }] });
  t.equal(model.status, 404);
  isVllmError(t, model.json, 404, 'NotFoundError');
  const n2 = await post('/v1/completions', { prompt: 'x', n: 2 });
  t.equal(n2.status, 400);
  t.match(n2.json.error.message, /n=2/);
  t.equal(n2.json.error.param, 'n');
  const long = await post('/v1/completions', { prompt: Array(2000).fill(1), max_tokens: 100 });
  t.equal(long.status, 400);
  t.match(long.json.error.message, /maximum context length is 2048 tokens/);
  const so = await post('/v1/completions', { prompt: 'x', stream_options: { include_usage: true } });
  t.equal(so.status, 400, 'stream_options without stream');
  const noMsgs = await post('/v1/chat/completions', { messages: [] });
  t.equal(noMsgs.status, 400);
  const oov = await post('/v1/completions', { prompt: [1, 10_000_000] });
  t.equal(oov.status, 400);
  const unknown = await fetch(`${w.url}/v2/nothing`);
  t.equal(unknown.status, 404);
  const wrongMethod = await fetch(`${w.url}/v1/completions`);
  t.equal(wrongMethod.status, 405);
});

t.test('GET /metrics has vLLM names with model_name and engine labels', async (t) => {
  await post('/v1/completions', { prompt: 'warm the histograms', max_tokens: 2 });
  const text = await (await fetch(`${w.url}/metrics`)).text();
  for (const name of [
    'vllm:num_requests_running',
    'vllm:num_requests_waiting',
    'vllm:kv_cache_usage_perc',
    'vllm:prefix_cache_queries_total',
    'vllm:prefix_cache_hits_total',
  ]) {
    t.match(text, new RegExp(`^${name}\\{model_name="Qwen/Qwen3-0.6B",engine="0"\\} \\d`, 'm'), name);
  }
  t.match(text, /^vllm:time_to_first_token_seconds_count\{model_name="Qwen\/Qwen3-0.6B",engine="0"\} [1-9]/m);
  t.match(text, /^vllm:e2e_request_latency_seconds_bucket\{le="0.3",/m);
});

t.test('a client that disconnects mid-stream is aborted and its blocks freed', async (t) => {
  const body = JSON.stringify({
    prompt: Array.from({ length: 200 }, (_, i) => i + 10),
    max_tokens: 1000,
    stream: true,
  });
  let chunks = 0;
  await new Promise<void>((resolve, reject) => {
    const req = request(
      `${w.url}/v1/completions`,
      { method: 'POST', headers: { 'content-type': 'application/json' } },
      (res) => {
        res.on('data', () => {
          if (++chunks === 3) {
            req.destroy();
            resolve();
          }
        });
      },
    );
    req.on('error', (err) => (chunks >= 3 ? undefined : reject(err)));
    req.end(body);
  });
  t.equal(w.stats().running, 1, 'running while streaming');
  const deadline = Date.now() + 5000;
  while (w.stats().running > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  const s = w.stats();
  t.equal(s.running, 0, 'aborted at once');
  t.equal(s.kvBlocksUsed, 0, 'blocks freed');
  t.ok(s.kvBlocksCached >= 12, 'the prompt blocks stay cached');
  t.ok(s.generatedTokens < 500, 'generation stopped');
  const metrics = await (await fetch(`${w.url}/metrics`)).text();
  t.match(metrics, /^vllm:num_requests_running\{[^}]*\} 0$/m);
});

t.test(
  '--stream-interval: the first token alone, then a chunk per N tokens, the rest with the finish reason',
  async (t) => {
    const chunked = await startSimWorker({ tokenizer, maxModelLen: 2048, streamInterval: 16, timing: { speedup: 10 } });
    t.teardown(() => chunked.close());
    for (const [worker, sizes] of [
      [chunked, [1, 16, 16, 7]],
      [w, Array.from({ length: 40 }, () => 1)],
    ] as const) {
      const res = await fetch(`${worker.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          prompt: [1, 2, 3, 4],
          max_tokens: 40,
          stream: true,
          stream_options: { include_usage: true },
        }),
      });
      const events = (await res.text())
        .split('\n\n')
        .filter((e) => e.startsWith('data: {'))
        .map((e) => JSON.parse(e.slice(6)));
      const tokenEvents = events.filter((e) => e.choices.length > 0);
      let next = 0;
      const expectedTexts = sizes.map((n) => Array.from({ length: n }, () => tokenizer.outputText(next++)).join(''));
      t.same(
        tokenEvents.map((e) => e.choices[0].text),
        expectedTexts,
        `chunks of ${sizes.join(', ')} tokens`,
      );
      t.same(
        tokenEvents.map((e) => e.choices[0].finish_reason),
        [...sizes.slice(1).map(() => null), 'length'],
      );
      t.equal(events.at(-1).usage.completion_tokens, 40);
    }
  },
);
