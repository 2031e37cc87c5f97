import t from 'tap';
import { createServer, request as httpRequest, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { startGateway, eventually } from '../../fixtures/gateway.js';

/**
 * The front's own answers, against plain fake workers (no simulator needed):
 * every bad input gets an OpenAI-style error and the gateway keeps serving.
 */
interface FakeWorker {
  url: string;
  server: Server;
  /** Requests whose client side closed before we answered. */
  aborted: string[];
  seen: string[];
}

async function fakeWorker(teardown: (fn: () => unknown) => void): Promise<FakeWorker> {
  const w: FakeWorker = { url: '', server: createServer(), aborted: [], seen: [] };
  w.server.on('request', (req: IncomingMessage, res) => {
    w.seen.push(`${req.method} ${req.url}`);
    if (req.url === '/health') return void res.writeHead(200).end();
    if (req.url === '/v1/models') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return void res.end(
        JSON.stringify({ object: 'list', data: [{ id: 'm', object: 'model', max_model_len: 4096, owned_by: 'vllm' }] }),
      );
    }
    if (req.url === '/v1/audio/transcriptions') {
      // Never answers: the test checks that the gateway aborts us when its client leaves.
      res.on('close', () => w.aborted.push(req.url!));
      return;
    }
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      res.writeHead(200, {
        'content-type': 'application/json',
        'x-upstream-echo': String(req.headers['x-request-id']),
      });
      res.end(JSON.stringify({ ok: true, echo: body.length, hop: req.headers['x-hop-secret'] ?? null }));
    });
  });
  await new Promise<void>((r) => w.server.listen(0, '127.0.0.1', () => r()));
  w.url = `http://127.0.0.1:${(w.server.address() as AddressInfo).port}`;
  teardown(
    () =>
      new Promise<void>((r) => {
        w.server.closeAllConnections();
        w.server.close(() => r());
      }),
  );
  return w;
}

const post = (url: string, body: string | Buffer, headers: Record<string, string> = {}) =>
  request(url, { method: 'POST', body, headers: { 'content-type': 'application/json', ...headers } });

t.test('front: errors, passthrough and headers', async (t) => {
  const a = await fakeWorker(t.teardown.bind(t));
  const dead = 'http://127.0.0.1:1'; // nothing listens on port 1
  const { url, adminUrl } = await startGateway(t.teardown.bind(t), {
    server: { host: '127.0.0.1', maxBodyBytes: 4096 },
    fleet: {
      health: { intervalMs: 100, timeoutMs: 300 },
      workers: [
        { id: 'a', url: a.url, models: ['m'] },
        { id: 'gone', url: dead, models: ['only-on-dead-worker'] },
      ],
    },
  });

  t.test('malformed JSON is 400 with an OpenAI error body', async (t) => {
    const r = await post(`${url}/v1/chat/completions`, '{"model": "m", "messages": [');
    t.equal(r.statusCode, 400);
    const body = (await r.body.json()) as { error: Record<string, unknown> };
    t.match(body.error, { type: 'invalid_request_error', code: 'invalid_json', message: /not valid JSON/ });
    t.ok('param' in body.error);
  });

  t.test('wrong field types name the field', async (t) => {
    for (const [body, param] of [
      [{ model: 7, messages: [] }, 'model'],
      [{ model: 'm', messages: 'hi' }, 'messages'],
      [{ model: 'm', messages: [], stream: 'yes' }, 'stream'],
      [{ model: 'm', prompt: { text: 'x' } }, 'prompt'],
      [{ model: 'm', messages: [], max_tokens: -1 }, 'max_tokens'],
    ] as const) {
      const path = 'prompt' in body ? '/v1/completions' : '/v1/chat/completions';
      const r = await post(url + path, JSON.stringify(body));
      t.equal(r.statusCode, 400, JSON.stringify(body));
      t.equal(((await r.body.json()) as { error: { param: string } }).error.param, param);
    }
  });

  t.test('an oversized body is 413', async (t) => {
    const r = await post(`${url}/v1/completions`, JSON.stringify({ model: 'm', prompt: 'x'.repeat(10_000) }));
    t.equal(r.statusCode, 413);
    t.match(await r.body.json(), { error: { code: 'request_too_large' } });
  });

  t.test('an unknown model is 404', async (t) => {
    const r = await post(`${url}/v1/completions`, JSON.stringify({ model: 'nope', prompt: 'hi' }));
    t.equal(r.statusCode, 404);
    t.match(await r.body.json(), { error: { code: 'model_not_found', param: 'model' } });
  });

  t.test('a model whose only worker is down is 503', async (t) => {
    const r = await post(`${url}/v1/completions`, JSON.stringify({ model: 'only-on-dead-worker', prompt: 'hi' }));
    t.equal(r.statusCode, 503);
    t.match(await r.body.json(), { error: { code: 'no_healthy_worker' } });
  });

  t.test('a wrong method is 405, an unknown path 404', async (t) => {
    const r = await request(`${url}/v1/chat/completions`);
    t.equal(r.statusCode, 405);
    t.equal(r.headers.allow, 'POST');
    await r.body.dump();
    const u = await request(`${url}/nowhere`);
    t.equal(u.statusCode, 404);
    await u.body.dump();
  });

  t.test('a routed request carries the gateway headers; hop-by-hop headers are dropped; request id kept', async (t) => {
    // Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1); undici refuses to send them, so use node:http.
    const r = await new Promise<{ status: number; headers: Record<string, unknown>; body: string }>(
      (resolve, reject) => {
        const req = httpRequest(
          `${url}/v1/completions`,
          {
            method: 'POST',
            headers: {
              'content-type': 'application/json',
              'x-request-id': 'req-123',
              connection: 'keep-alive, x-hop-secret',
              'x-hop-secret': 'do-not-forward',
            },
          },
          (res) => {
            let body = '';
            res.on('data', (c: Buffer) => (body += c.toString()));
            res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
          },
        );
        req.on('error', reject);
        req.end(JSON.stringify({ model: 'm', prompt: 'hi' }));
      },
    );
    t.equal(r.status, 200);
    t.equal(r.headers['x-kvgate-worker'], 'a');
    t.equal(r.headers['x-kvgate-strategy'], 'least-load');
    t.equal(r.headers['x-request-id'], 'req-123');
    t.equal(r.headers['x-upstream-echo'], 'req-123', 'the worker saw the same request id');
    t.match(JSON.parse(r.body), { ok: true, hop: null });
    const fresh = await post(`${url}/v1/completions`, JSON.stringify({ model: 'm', prompt: 'hi' }));
    t.match(fresh.headers['x-request-id'], /^[0-9a-f-]{36}$/, 'an id is created when the client sends none');
    await fresh.body.dump();
  });

  t.test('health, readiness, models and metrics', async (t) => {
    t.equal((await request(`${url}/health`)).statusCode, 200);
    const ready = await request(`${url}/ready`);
    t.equal(ready.statusCode, 200);
    t.match(await ready.body.json(), { ready: true, healthyWorkers: 1, workers: 2 });
    const models = (await (await request(`${url}/v1/models`)).body.json()) as {
      data: { id: string; max_model_len?: number }[];
    };
    t.same(models.data.map((m) => m.id).sort(), ['m', 'only-on-dead-worker']);
    t.equal(models.data.find((m) => m.id === 'm')!.max_model_len, 4096, "the worker's own card is kept");
    const metrics = await (await request(`${url}/metrics`)).body.text();
    t.match(
      metrics,
      /kvgate_requests_total\{route="completions",worker="a",strategy="least-load",status="200",arm="none"\} \d+/,
    );
    t.match(
      metrics,
      /kvgate_requests_total\{route="completions",worker="none",strategy="none",status="400",arm="none"\}/,
    );
    t.match(metrics, /kvgate_worker_healthy\{worker="gone"\} 0/);
  });

  t.test('per-request engine routes pass through; the upstream is aborted when the client leaves', async (t) => {
    const r = await post(`${url}/v1/audio/translations`, JSON.stringify({ model: 'm', input: 'x' }));
    t.equal(r.statusCode, 200);
    t.equal(r.headers['x-kvgate-strategy'], 'passthrough');
    await r.body.dump();
    const req = httpRequest(`${url}/v1/audio/transcriptions`, { method: 'POST' });
    req.on('error', () => {});
    req.end('{}');
    await eventually(() => a.seen.includes('POST /v1/audio/transcriptions'), 5000);
    req.destroy();
    await eventually(() => a.aborted.includes('/v1/audio/transcriptions'), 5000);
    t.pass('the worker saw its request closed');
  });

  t.test('admin: workers and a dry-run route', async (t) => {
    const workers = (await (await request(`${adminUrl}/debug/workers`)).body.json()) as {
      workers: { id: string; healthy: boolean }[];
    };
    t.same(
      workers.workers.map((w) => [w.id, w.healthy]),
      [
        ['a', true],
        ['gone', false],
      ],
    );
    const route = await post(`${adminUrl}/debug/route`, JSON.stringify({ model: 'm', prompt: 'hello' }));
    t.equal(route.statusCode, 200);
    t.match(await route.body.json(), { worker: 'a', strategy: 'least-load', explain: { rule: String } });
    t.same(a.seen.filter((s) => s.startsWith('POST /v1/completions')).length, 2, 'the dry run forwarded nothing');
  });

  t.test('the gateway still serves after all of that', async (t) => {
    const r = await post(
      `${url}/v1/chat/completions`,
      JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] }),
    );
    t.equal(r.statusCode, 200);
    await r.body.dump();
  });
});

t.test('admin token: bearer required, compared in constant time', async (t) => {
  const a = await fakeWorker(t.teardown.bind(t));
  const token = 'a-long-enough-admin-token';
  const { adminUrl } = await startGateway(t.teardown.bind(t), {
    server: { host: '127.0.0.1' },
    admin: { token },
    fleet: { workers: [{ id: 'a', url: a.url, models: ['m'] }] },
  });
  const none = await request(`${adminUrl}/debug/workers`);
  t.equal(none.statusCode, 401);
  t.match(await none.body.json(), { error: { type: 'authentication_error' } });
  const wrong = await request(`${adminUrl}/debug/workers`, { headers: { authorization: 'Bearer nope' } });
  t.equal(wrong.statusCode, 401);
  await wrong.body.dump();
  const ok = await request(`${adminUrl}/debug/workers`, { headers: { authorization: `Bearer ${token}` } });
  t.equal(ok.statusCode, 200);
  await ok.body.dump();
});
