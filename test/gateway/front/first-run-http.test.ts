import t from 'tap';
import { request } from 'undici';
import { eventually, fleetConfig, MODEL, startGateway, startSim } from '../../fixtures/gateway.js';

/**
 * The HTTP surface as a new user meets it, in front of the simulator (which answers
 * as vLLM does): model retrieval by id, non-JSON bodies, a prompt far over the
 * context length, which errors are the engine's, and the admin port's 404.
 */
const MAX_MODEL_LEN = 40960; // the simulator's default, as vLLM's for Qwen3-0.6B

type ErrorBody = { error: { message: string; type: string; param: string | null; code: string | number | null } };

t.test('first run over HTTP', async (t) => {
  const { workers } = await startSim(t.teardown.bind(t), 1);
  const config = fleetConfig(workers, { strategy: 'kv' });
  (config.models as Record<string, Record<string, unknown>>)[MODEL]!.maxModelLen = MAX_MODEL_LEN;
  const { url, adminUrl } = await startGateway(t.teardown.bind(t), config);
  await eventually(async () => (await (await request(`${url}/ready`)).body.json()) as { ready: boolean } | undefined);
  const get = (path: string) => request(`${url}${path}`);
  const post = (path: string, body: string, headers: Record<string, string> = { 'content-type': 'application/json' }) =>
    request(`${url}${path}`, { method: 'POST', body, headers });

  t.test('GET /v1/models/{id}: the encoded slash the openai client sends, or a raw one', async (t) => {
    for (const path of ['/v1/models/Qwen%2FQwen3-0.6B', '/v1/models/Qwen%2fQwen3-0.6B', '/v1/models/Qwen/Qwen3-0.6B']) {
      const res = await get(path);
      t.equal(res.statusCode, 200, path);
      const card = (await res.body.json()) as { id: string; object: string; max_model_len?: number };
      t.equal(card.id, MODEL);
      t.equal(card.object, 'model');
      t.equal(card.max_model_len, MAX_MODEL_LEN, 'the worker card itself');
    }
    const missing = await get('/v1/models/Qwen%2FNope');
    t.equal(missing.statusCode, 404);
    t.match(await missing.body.json(), { error: { code: 'model_not_found', param: 'model' } });
    for (const path of ['/v1/models/..%2F..%2Fhealth', '/v1/models/a%2F.%2Fb', '/v1/models/%zz']) {
      const res = await get(path);
      t.equal(res.statusCode, 400, path);
      t.match(await res.body.json(), { error: { code: 'invalid_path' } });
    }
    // Elsewhere encoded slashes and dot segments stay refused before any worker sees them.
    // (URL clients resolve literal dot segments themselves; test/gateway/front/security.test.ts sends them raw.)
    for (const path of ['/v1/embeddings%2F..', '/v1/files/a%2Fb']) {
      const res = await get(path);
      t.equal(res.statusCode, 400, path);
      t.match(await res.body.json(), { error: { code: 'invalid_path' } });
    }
  });

  t.test('a body that is not declared JSON is refused as vLLM refuses it', async (t) => {
    const body = JSON.stringify({ model: MODEL, prompt: 'hi', max_tokens: 1 });
    for (const headers of [
      { 'content-type': 'text/plain' },
      { 'content-type': 'application/x-www-form-urlencoded' },
      {},
    ] as Record<string, string>[]) {
      const res = await post('/v1/completions', body, headers);
      t.equal(res.statusCode, 400, JSON.stringify(headers));
      t.equal(res.headers['x-kvgate-worker'], undefined, 'no worker saw it');
      t.same(await res.body.json(), {
        error: {
          message: "Unsupported Media Type: Only 'application/json' is allowed",
          type: 'invalid_request_error',
          param: null,
          code: 'unsupported_media_type',
        },
      });
    }
    const withCharset = await post('/v1/completions', body, { 'content-type': 'Application/JSON; charset=utf-8' });
    t.equal(withCharset.statusCode, 200, 'parameters and case do not matter');
    await withCharset.body.dump();
  });

  t.test('a prompt over the context length is answered at once, in the engine words', async (t) => {
    const words = (chars: number) => {
      const parts: string[] = [];
      let n = 0;
      for (let i = 0; n < chars; i++) {
        const w = `word${i % 89} `;
        parts.push(w);
        n += w.length;
      }
      return parts.join('');
    };
    const contextError = (m: string) =>
      new RegExp(
        `^This model's maximum context length is ${MAX_MODEL_LEN} tokens\\. However, your request has ${m}\\. Please reduce the length of the input messages\\.$`,
      );
    const cases: [string, string, Record<string, unknown>, RegExp][] = [
      [
        '20 MB completion',
        '/v1/completions',
        { prompt: words(20 * 1024 * 1024) },
        contextError(`\\d+ input characters, more than ${MAX_MODEL_LEN} tokens can hold`),
      ],
      [
        '6 MB chat',
        '/v1/chat/completions',
        { messages: [{ role: 'user', content: words(6 * 1024 * 1024) }] },
        contextError(`\\d+ input characters, more than ${MAX_MODEL_LEN} tokens can hold`),
      ],
      [
        '1 MB: counted until past the limit',
        '/v1/completions',
        { prompt: words(1024 * 1024) },
        contextError('at least \\d+ input tokens'),
      ],
      [
        'token ids',
        '/v1/completions',
        { prompt: new Array(MAX_MODEL_LEN).fill(11) },
        contextError(`${MAX_MODEL_LEN} input tokens`),
      ],
    ];
    for (const [name, path, extra, message] of cases) {
      const res = await post(path, JSON.stringify({ model: MODEL, max_tokens: 1, ...extra }));
      t.equal(res.statusCode, 400, name);
      t.equal(res.headers['x-kvgate-worker'], undefined, `${name}: the gateway answered, no worker`);
      const body = (await res.body.json()) as ErrorBody;
      t.match(body.error.message, message, name);
      t.same({ ...body.error, message: '' }, { message: '', type: 'BadRequestError', param: null, code: 400 }, name);
    }
    // Tokenized whole, the count is exact and the answer is the engine's word for word.
    const exact = JSON.stringify({ model: MODEL, max_tokens: 1, prompt: words(MAX_MODEL_LEN * 4 - 100) });
    const viaGateway = await post('/v1/completions', exact);
    const direct = await request(`${workers[0]!.url}/v1/completions`, {
      method: 'POST',
      body: exact,
      headers: { 'content-type': 'application/json' },
    });
    t.equal(viaGateway.statusCode, 400);
    t.equal(direct.statusCode, 400);
    const [g, e] = [(await viaGateway.body.json()) as ErrorBody, (await direct.body.json()) as ErrorBody];
    t.equal(g.error.message, e.error.message, 'the same message as the engine');
    t.equal(g.error.type, e.error.type);
    // Under the limit nothing changes; with truncate_prompt_tokens the engine keeps the tail, so no refusal.
    const fits = await post('/v1/completions', JSON.stringify({ model: MODEL, max_tokens: 1, prompt: words(4000) }));
    t.equal(fits.statusCode, 200);
    t.ok(fits.headers['x-kvgate-worker']);
    await fits.body.dump();
    const truncated = await post(
      '/v1/completions',
      JSON.stringify({ model: MODEL, max_tokens: 1, truncate_prompt_tokens: 100, prompt: words(200_000) }),
    );
    t.equal(truncated.headers['x-kvgate-worker']!, workers[0]!.worker, 'forwarded to the engine');
    await truncated.body.dump();
  });

  t.test("the engine's own errors pass through as it wrote them, with the worker named", async (t) => {
    // A per-request engine route the simulator does not serve: the pass-through forwards it, the engine answers.
    const res = await post('/v1/audio/transcriptions', '{}');
    t.equal(res.statusCode, 404);
    t.equal(res.headers['x-kvgate-worker']!, workers[0]!.worker);
    t.same(await res.body.json(), { detail: 'Not Found' });
    // A path no engine route matches is the gateway's own 404 (issue 23's allow-list), without a worker named.
    const unknown = await post('/v1/no-such-route', '{}');
    t.equal(unknown.statusCode, 404);
    t.equal(unknown.headers['x-kvgate-worker'], undefined);
    t.match(await unknown.body.json(), { error: { code: 'unknown_url' } });
  });

  t.test('the admin 404 lists the admin routes; /debug/route names its block counts apart', async (t) => {
    const res = await request(`${adminUrl}/debug/nope`);
    t.equal(res.statusCode, 404);
    const body = (await res.body.json()) as ErrorBody;
    for (const route of ['GET /debug/workers', 'GET /debug/experiments', 'GET /debug/planner', 'POST /debug/route'])
      t.match(body.error.message, route);
    const routed = await request(`${adminUrl}/debug/route`, {
      method: 'POST',
      body: JSON.stringify({ model: MODEL, prompt: words40() }),
    });
    const r = (await routed.body.json()) as {
      explain: { candidates?: { promptBlocks: number }[] } & Record<string, unknown>;
      context: { promptTokens: number; fullBlocksHashed: number; promptBlocks?: number };
    };
    t.equal(r.context.promptBlocks, undefined, 'no second, different promptBlocks');
    t.equal(r.context.fullBlocksHashed, Math.floor(r.context.promptTokens / 16));
  });
});

/** A prompt of 40 tokens or so: two and a half blocks, where the two counts differ. */
function words40(): string {
  return Array.from({ length: 40 }, (_, i) => `w${i}`).join(' ');
}
