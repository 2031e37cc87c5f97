import t from 'tap';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { RemoteTokenizeError, RemoteTokenizer } from '../../../indexer/tokenize/remote-tokenizer.js';
import { localTokenSource, remoteTokenSource } from '../../../indexer/tokenize/prompt-tokens.js';
import { PromptTokenizer } from '../../../indexer/tokenize/tokenizer.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';
import { chatCases } from '../../fixtures/tokenizer/corpus.js';

type Handler = (body: Record<string, unknown>, res: ServerResponse) => void | Promise<void>;

/** A stand-in for vLLM's /tokenize; `handler` decides the answer, `bodies` records what arrived. */
async function fakeWorker(
  t: { teardown(fn: () => void): void },
  handler: Handler,
): Promise<{ url: string; bodies: Record<string, unknown>[] }> {
  const bodies: Record<string, unknown>[] = [];
  const server = createServer((req: IncomingMessage, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/tokenize') {
        res.writeHead(404).end();
        return;
      }
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
      bodies.push(body);
      void handler(body, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    server.closeAllConnections();
    server.close();
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, bodies };
}

const json = (res: ServerResponse, status: number, body: unknown): void =>
  void res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));

t.test('remote source equals the local source on the corpus, and caches whole requests', async (t) => {
  const engine = await PromptTokenizer.load(QWEN3_TOKENIZER_DIR);
  const worker = await fakeWorker(t, async (body, res) => {
    const tokens = Array.isArray(body.messages)
      ? await engine.tokenizeChat(body.messages, {
          tools: body.tools as unknown[] | undefined,
          templateKwargs: body.chat_template_kwargs as Record<string, unknown> | undefined,
          addGenerationPrompt: body.add_generation_prompt as boolean,
          continueFinalMessage: body.continue_final_message as boolean,
          addSpecialTokens: body.add_special_tokens as boolean,
        })
      : await engine.tokenizeCompletion(body.prompt as string, body.add_special_tokens as boolean);
    json(res, 200, { count: tokens.length, max_model_len: 40960, tokens, token_strs: null });
  });
  const remote = await RemoteTokenizer.create({ baseUrl: worker.url });
  const source = remoteTokenSource(remote);
  const local = localTokenSource(await PromptTokenizer.load(QWEN3_TOKENIZER_DIR));
  for (const c of chatCases)
    t.same(await source.tokenize(c.body, 'chat'), await local.tokenize(c.body, 'chat'), c.name);
  const calls = worker.bodies.length;
  t.equal(calls, chatCases.length, 'one call per distinct request');
  for (const c of chatCases) await source.tokenize(c.body, 'chat');
  t.equal(worker.bodies.length, calls, 'repeats are served from the cache');
  t.equal(remote.stats().hits, chatCases.length);

  const withTools = chatCases.find((c) => c.name === 'tools defined')!.body;
  const sent = worker.bodies.find((b) => Array.isArray(b.tools))!;
  t.same(
    sent,
    {
      model: 'Qwen/Qwen3-0.6B',
      add_generation_prompt: true,
      messages: withTools.messages,
      continue_final_message: false,
      add_special_tokens: false,
      tools: withTools.tools,
    },
    'vLLM chat form',
  );

  t.same(
    await source.tokenize({ model: 'Qwen/Qwen3-0.6B', prompt: 'hello' }, 'completion'),
    await local.tokenize({ prompt: 'hello' }, 'completion'),
  );
  t.same(
    worker.bodies.at(-1),
    { model: 'Qwen/Qwen3-0.6B', prompt: 'hello', add_special_tokens: true },
    'vLLM completion form',
  );
  const before = worker.bodies.length;
  t.same(await source.tokenize({ model: 'm', prompt: [4, 5, 6] }, 'completion'), [4, 5, 6], 'token ids need no call');
  t.equal(await source.tokenize({ model: 'm', prompt: ['a', 'b'] }, 'completion'), undefined, 'batch');
  t.equal(worker.bodies.length, before);
});

t.test('concurrent identical requests share one call', async (t) => {
  const worker = await fakeWorker(
    t,
    (_body, res) => void setTimeout(() => json(res, 200, { count: 2, max_model_len: 10, tokens: [1, 2] }), 50),
  );
  const remote = await RemoteTokenizer.create({ baseUrl: worker.url });
  const results = await Promise.all([1, 2, 3].map(() => remote.tokenizeCompletion('m', 'same')));
  t.same(results, [
    [1, 2],
    [1, 2],
    [1, 2],
  ]);
  t.equal(worker.bodies.length, 1);
});

t.test('errors are clear and never cached', async (t) => {
  let mode = 'openai-error';
  const worker = await fakeWorker(t, (_body, res) => {
    if (mode === 'openai-error')
      json(res, 400, { error: { message: 'bad messages', type: 'BadRequestError', code: 400 } });
    else if (mode === 'old-error') json(res, 404, { object: 'error', message: 'The model `x` does not exist.' });
    else if (mode === 'text') res.writeHead(500).end('boom');
    else if (mode === 'junk') json(res, 200, { count: 1, tokens: ['a'] });
    else if (mode === 'hang') {
      /* never answers */
    } else json(res, 200, { count: 1, max_model_len: 10, tokens: [42] });
  });
  const remote = await RemoteTokenizer.create({ baseUrl: worker.url, timeoutMs: 200 });
  const expectError = async (pattern: RegExp, status: number | undefined) => {
    const err = await remote.tokenizeCompletion('m', 'p').then(
      () => undefined,
      (e: unknown) => e,
    );
    t.type(err, RemoteTokenizeError, mode);
    t.match((err as Error).message, pattern, mode);
    t.equal((err as RemoteTokenizeError).status, status, `${mode} status`);
  };
  await expectError(/POST http:\/\/127\.0\.0\.1:\d+\/tokenize: HTTP 400: bad messages/, 400);
  mode = 'old-error';
  await expectError(/HTTP 404: The model `x` does not exist\./, 404);
  mode = 'text';
  await expectError(/HTTP 500: boom/, 500);
  mode = 'junk';
  await expectError(/no "tokens" array/, 200);
  mode = 'hang';
  await expectError(/timed out after 200 ms/, undefined);
  mode = 'ok';
  t.same(await remote.tokenizeCompletion('m', 'p'), [42], 'the same request succeeds once the worker answers');

  const closed = await RemoteTokenizer.create({ baseUrl: 'http://127.0.0.1:1', timeoutMs: 500 });
  const err = await closed.tokenizeCompletion('m', 'p').then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  t.match(err?.message, /^remote tokenize: POST http:\/\/127\.0\.0\.1:1\/tokenize: /, 'connection refused');
  const none = await RemoteTokenizer.create({ baseUrl: () => undefined });
  await t.rejects(none.tokenizeCompletion('m', 'p'), /no worker available/);
});

t.test('result cache is bounded by bytes', async (t) => {
  const worker = await fakeWorker(t, (body, res) =>
    json(res, 200, { count: 1000, max_model_len: 10, tokens: new Array(1000).fill(String(body.prompt).length) }),
  );
  const remote = await RemoteTokenizer.create({ baseUrl: worker.url, cacheBytes: 20_000 });
  for (let i = 0; i < 30; i++) await remote.tokenizeCompletion('m', `prompt ${i}`);
  const stats = remote.stats();
  t.ok(stats.cacheBytes <= 20_000, `cache holds ${stats.cacheBytes} bytes`);
  t.ok(stats.cacheEntries >= 3 && stats.cacheEntries < 30, `${stats.cacheEntries} entries kept`);
});
