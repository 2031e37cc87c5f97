import { Readable } from 'node:stream';
import t from 'tap';
import { request } from 'undici';
import { startGateway } from '../../fixtures/gateway.js';
import { echoWorker, parseRaw, rawExchange } from '../../fixtures/hardening.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';

/**
 * Bad input at the front: every malformed body, header or slow client gets an
 * OpenAI-style 4xx (or a clean close) and the gateway keeps serving.
 */
const post = (url: string, body: string, headers: Record<string, string> = {}) =>
  request(url, { method: 'POST', body, headers: { 'content-type': 'application/json', ...headers } });

t.test('bad input', async (t) => {
  const a = await echoWorker(t.teardown.bind(t), 'a');
  const { url, adminUrl } = await startGateway(t.teardown.bind(t), {
    server: {
      host: '127.0.0.1',
      maxBodyBytes: 64 * 1024,
      headersTimeoutMs: 1000,
      requestTimeoutMs: 1500,
      maxHeaderBytes: 8192,
    },
    fleet: { health: { intervalMs: 100, timeoutMs: 300 }, workers: [{ id: 'a', url: a.url, models: ['m'] }] },
    models: { m: { tokenizer: { type: 'local', dir: QWEN3_TOKENIZER_DIR }, blockSize: 16 } },
    routing: { strategy: 'kv' },
  });

  t.test('wrong types in known fields are 400 naming the field', async (t) => {
    const chat = (extra: Record<string, unknown>) => ({
      model: 'm',
      messages: [{ role: 'user', content: 'hi' }],
      ...extra,
    });
    const cases: [string, unknown, string][] = [
      ['chat', chat({ model: 5 }), 'model'],
      ['chat', chat({ model: '' }), 'model'],
      ['chat', chat({ stream: 'true' }), 'stream'],
      ['chat', chat({ max_tokens: '10' }), 'max_tokens'],
      ['chat', chat({ max_completion_tokens: -5 }), 'max_completion_tokens'],
      ['chat', chat({ n: '2' }), 'n'],
      ['chat', chat({ temperature: 'hot' }), 'temperature'],
      ['chat', chat({ stream_options: 'usage' }), 'stream_options'],
      ['chat', chat({ stream_options: [] }), 'stream_options'],
      ['chat', chat({ tools: { type: 'function' } }), 'tools'],
      ['chat', { model: 'm', messages: { role: 'user' } }, 'messages'],
      ['chat', { model: 'm' }, 'messages'],
      ['chat', { model: 'm', messages: ['hi'] }, 'messages[0]'],
      [
        'chat',
        {
          model: 'm',
          messages: [
            { role: 'user', content: 'x' },
            { role: 7, content: 'x' },
          ],
        },
        'messages[1].role',
      ],
      ['chat', { model: 'm', messages: [{ content: 'x' }] }, 'messages[0].role'],
      ['chat', { model: 'm', messages: [{ role: 'user', content: 42 }] }, 'messages[0].content'],
      ['chat', { model: 'm', messages: [{ role: 'user', content: { text: 'x' } }] }, 'messages[0].content'],
      ['completion', { model: 'm' }, 'prompt'],
      ['completion', { model: 'm', prompt: 12 }, 'prompt'],
      ['completion', { model: 'm', prompt: [{}] }, 'prompt'],
      ['completion', { model: 'm', prompt: 'x', max_tokens: true }, 'max_tokens'],
    ];
    for (const [kind, body, param] of cases) {
      const r = await post(`${url}/v1/${kind === 'chat' ? 'chat/' : ''}completions`, JSON.stringify(body));
      const json = (await r.body.json()) as { error: { param: string; type: string; message: string } };
      t.equal(r.statusCode, 400, `${JSON.stringify(body)}`);
      t.equal(json.error.param, param, `${JSON.stringify(body)}: ${json.error.message}`);
      t.equal(json.error.type, 'invalid_request_error');
    }
    t.equal(a.seen.length, 0, 'nothing reached the worker');
  });

  t.test('malformed JSON, non-object bodies and oversized bodies', async (t) => {
    for (const body of [
      '',
      '{',
      'null',
      '[]',
      '"x"',
      '{"model":"m",}',
      '\u0000\u0001',
      '{"model":"m","messages":[]}garbage',
    ]) {
      const r = await post(`${url}/v1/chat/completions`, body);
      t.equal(r.statusCode, 400, JSON.stringify(body));
      t.match(await r.body.json(), { error: { type: 'invalid_request_error', code: 'invalid_json' } });
    }
    // Chunked, so the limit is hit while reading rather than from content-length.
    const big = await request(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: Readable.from(
        (async function* () {
          for (let i = 0; i < 40; i++) yield Buffer.alloc(4096, 0x20);
        })(),
      ),
    }).catch((err: Error) => err);
    if (big instanceof Error) t.pass(`the connection was closed mid-upload (${big.message})`);
    else {
      t.equal(big.statusCode, 413);
      t.match(await big.body.json(), { error: { code: 'request_too_large' } });
    }
  });

  t.test('media content parts route by their text; absurd max_tokens goes to the engine unchanged', async (t) => {
    const image = { type: 'image_url', image_url: { url: 'data:image/png;base64,iVBORw0KGgo=' } };
    const audio = { type: 'input_audio', input_audio: { data: 'AAAA', format: 'wav' } };
    const body = {
      model: 'm',
      max_tokens: 1e15,
      messages: [{ role: 'user', content: [{ type: 'text', text: 'describe this' }, image, audio] }],
    };
    const r = await post(`${url}/v1/chat/completions`, JSON.stringify(body));
    t.equal(r.statusCode, 200);
    const echo = (await r.body.json()) as { body: string };
    t.same(JSON.parse(echo.body), body, 'the body was forwarded unchanged, max_tokens included');
    // The dry run shows why: hashing stops at the first block covering media (here the first block); text-only has blocks.
    const dry = async (b: unknown) =>
      (await (await post(`${adminUrl}/debug/route`, JSON.stringify(b))).body.json()) as {
        worker: string;
        explain?: { stoppedAt?: string; stoppedAtBlock?: number };
        context: { fullBlocksHashed?: number };
      };
    const media = await dry(body);
    t.equal(media.worker, 'a');
    t.equal(media.explain?.stoppedAt, 'multimodal', 'hashing stopped at the media');
    t.equal(media.explain?.stoppedAtBlock, 0, 'the media sits in the first block');
    t.equal(media.context.fullBlocksHashed, 0, 'no block before it to route by');
    const text = await dry({ model: 'm', messages: [{ role: 'user', content: 'describe this '.repeat(40) }] });
    t.ok((text.context.fullBlocksHashed ?? 0) > 0, 'a text prompt has blocks');
    const workers = (await (await request(`${adminUrl}/debug/workers`)).body.json()) as {
      workers: { load: Record<string, number> }[];
    };
    t.same(
      Object.values(workers.workers[0]!.load).filter((v) => v !== 0),
      [],
      'load accounting is back to zero after a 1e15-token request',
    );
  });

  t.test('oversized and malformed headers are 431/400 with an OpenAI body', async (t) => {
    const big = await rawExchange(url, [`GET /health HTTP/1.1\r\nhost: x\r\nx-big: ${'a'.repeat(10_000)}\r\n\r\n`]);
    const b = parseRaw(big.data);
    t.equal(b.status, 431);
    t.match(b.body, { error: { code: 'headers_too_large', type: 'invalid_request_error' } });
    t.ok(big.closed, 'connection closed');
    for (const raw of [
      'GET /health HTTP/1.1\r\nhost: x\r\nx-bad: a\u0001b\r\n\r\n',
      'GET /health HTTP/1.1\r\nhost: x\r\nbad header: x\r\n\r\n',
      'BREW /health HTTP/1.1\r\nhost: x\r\n\r\n',
      'GET /health HTTP/9.9\r\n\r\n',
      'POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello',
      'POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n',
    ]) {
      const r = await rawExchange(url, [raw]);
      const p = parseRaw(r.data);
      t.equal(p.status, 400, JSON.stringify(raw));
      t.match(p.body, { error: { type: 'invalid_request_error', code: 'malformed_request' } }, JSON.stringify(raw));
    }
  });

  t.test('a slowloris client is cut off by the header timeout', async (t) => {
    const head = 'GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ' + 'a'.repeat(100) + '\r\n\r\n';
    const r = await rawExchange(url, [...head], { gapMs: 100, timeoutMs: 8000 });
    t.ok(r.closed, `closed after ${r.ms} ms`);
    t.ok(r.ms < 7000, 'well before the whole head was sent');
    t.equal(parseRaw(r.data).status, 408, 'answered 408');
  });

  t.test('a slow body is cut off by the request timeout', async (t) => {
    const body = JSON.stringify({ model: 'm', prompt: 'x'.repeat(200) });
    const head = `POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n`;
    const r = await rawExchange(url, [head, ...body.match(/.{1,4}/g)!], { gapMs: 100, timeoutMs: 8000 });
    t.ok(r.closed, `closed after ${r.ms} ms`);
    t.ok(r.ms < 7000, 'before the body was complete');
    t.equal(parseRaw(r.data).status, 408, 'answered 408');
  });

  t.test('the request timeout never cuts a long streamed response', async (t) => {
    const started = Date.now();
    const r = await post(
      `${url}/v1/completions`,
      JSON.stringify({ model: 'm', prompt: 'hi', stream: true, slow_stream: true }),
    );
    t.equal(r.statusCode, 200);
    const text = await r.body.text();
    t.ok(Date.now() - started > 2500, 'the stream outlived the 1.5 s request timeout');
    t.match(text, /t9[\s\S]*\[DONE\]/, 'all chunks and the end marker arrived');
  });

  t.test('an odd x-request-id is replaced, a sane one kept', async (t) => {
    const body = JSON.stringify({ model: 'm', prompt: 'hi' });
    for (const [given, kept] of [
      ['req-42.a:b_c', true],
      ['has space', false],
      ['x'.repeat(129), false],
      ['caf\u00e9', false],
    ] as const) {
      const r = await post(`${url}/v1/completions`, body, { 'x-request-id': given });
      const echo = (await r.body.json()) as { headers: Record<string, string> };
      if (kept) t.equal(r.headers['x-request-id'], given);
      else t.match(r.headers['x-request-id'], /^[0-9a-f-]{36}$/, `${given.slice(0, 20)} replaced`);
      t.equal(echo.headers['x-request-id'], r.headers['x-request-id'], 'the worker saw the same id');
    }
  });

  t.test('still serving', async (t) => {
    const r = await post(
      `${url}/v1/chat/completions`,
      JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }], n: null, tools: null }),
    );
    t.equal(r.statusCode, 200);
    await r.body.dump();
  });
});
