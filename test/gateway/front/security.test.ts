import t from 'tap';
import { createServer, request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { request } from 'undici';
import { bearerMatches, createAdminHandler, isLoopback, type AdminDeps } from '../../../gateway/ops/admin.js';
import { configureUpstreamAuth, withWorkerAuth } from '../../../gateway/proxy/upstream-auth.js';
import { startGateway } from '../../fixtures/gateway.js';
import { echoWorker, parseRaw, rawExchange } from '../../fixtures/hardening.js';
import { startCli } from '../../fixtures/processes.js';

const CLIENT_SECRET = 'client-secret-xyz-0001';
const ADMIN_TOKEN = 'admin-token-abcdefghijkl';
const KEY_A = 'worker-a-key-123456';
const KEY_B = 'worker-b-key-456789';

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** node:http, so hop-by-hop and Host headers go out exactly as given (undici refuses some). */
function send(url: string, method: string, headers: Record<string, string>, body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      url,
      { method, headers: { 'content-type': 'application/json', ...headers }, agent: false },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: text }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

const echoed = (a: Answer) => JSON.parse(a.body) as { worker: string; headers: IncomingHttpHeaders; body: string };

t.test('admin: loopback only without a token, bearer token otherwise', async (t) => {
  t.ok(isLoopback('127.0.0.1'));
  t.ok(isLoopback('127.3.2.1'));
  t.ok(isLoopback('::1'));
  t.ok(isLoopback('::ffff:127.0.0.1'));
  for (const a of [
    '10.0.0.1',
    '::ffff:10.0.0.1',
    '128.0.0.1',
    '0.0.0.0',
    '::',
    '',
    undefined,
    '::ffff:1.2.3.4',
    '1127.0.0.1',
  ])
    t.notOk(isLoopback(a), String(a));
  t.ok(bearerMatches(`Bearer ${ADMIN_TOKEN}`, ADMIN_TOKEN));
  for (const h of [
    undefined,
    '',
    ADMIN_TOKEN,
    `bearer ${ADMIN_TOKEN}`,
    `Bearer ${ADMIN_TOKEN.slice(0, -1)}`,
    `Bearer ${ADMIN_TOKEN}x`,
    'Bearer ',
    `Basic ${ADMIN_TOKEN}`,
  ]) {
    t.notOk(bearerMatches(h, ADMIN_TOKEN), String(h));
  }
  // A real HTTP server running the admin handler, with the peer address rewritten as a remote client's.
  const deps = (token: string | undefined) => ({ fleet: { workers: [] }, pipeline: {}, token }) as unknown as AdminDeps;
  const start = async (token: string | undefined, remote: string) => {
    const handler = createAdminHandler(deps(token));
    const server = createServer((req, res) => {
      Object.defineProperty(req.socket, 'remoteAddress', { value: remote, configurable: true });
      handler(req, res);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    t.teardown(
      () =>
        new Promise<void>((r) => {
          server.closeAllConnections();
          server.close(() => r());
        }),
    );
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  };
  const remoteNoToken = await start(undefined, '203.0.113.9');
  const r1 = await request(`${remoteNoToken}/debug/workers`);
  t.equal(r1.statusCode, 403);
  t.match(await r1.body.json(), { error: { code: 'admin_loopback_only', type: 'authentication_error' } });
  const localNoToken = await start(undefined, '::ffff:127.0.0.1');
  const r2 = await request(`${localNoToken}/debug/workers`);
  t.equal(r2.statusCode, 200);
  await r2.body.dump();
  const remoteToken = await start(ADMIN_TOKEN, '203.0.113.9');
  const r3 = await request(`${remoteToken}/debug/workers`);
  t.equal(r3.statusCode, 401);
  await r3.body.dump();
  const r4 = await request(`${remoteToken}/debug/workers`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  t.equal(r4.statusCode, 200, 'a remote client with the token is served');
  await r4.body.dump();
  const localToken = await start(ADMIN_TOKEN, '127.0.0.1');
  const r5 = await request(`${localToken}/debug/workers`);
  t.equal(r5.statusCode, 401, 'with a token configured, loopback needs it too');
  await r5.body.dump();
});

t.test('upstream auth: per-worker keys, resolved once, replacing any Authorization', async (t) => {
  const a = { id: 'a' };
  const b = { id: 'b' };
  const c = { id: 'c' };
  configureUpstreamAuth([a, b, c], [{ id: 'a', apiKey: 'ka' }, { id: 'b', apiKeyEnv: 'K_B' }, { id: 'c' }], {
    K_B: 'kb',
  });
  t.same(withWorkerAuth(a, { authorization: 'Bearer client', x: '1' }), { authorization: 'Bearer ka', x: '1' });
  t.same(withWorkerAuth(b, {}), { authorization: 'Bearer kb' });
  const h = { x: '1' };
  t.equal(withWorkerAuth(c, h), h, 'no key: headers untouched');
  t.throws(
    () => configureUpstreamAuth([b], [{ id: 'b', apiKeyEnv: 'K_B' }], {}),
    /worker 'b': apiKeyEnv K_B is not set/,
  );
  t.throws(() => configureUpstreamAuth([a], [{ id: 'a', apiKey: 'x', apiKeyEnv: 'K' }], { K: 'y' }), /not both/);
});

t.test(
  'gateway: no header reaches another address; forwarded-* appended; hop-by-hop stripped; upstream auth; no secret echoed or logged',
  async (t) => {
    const teardown = t.teardown.bind(t);
    const [a, b, c, evil] = await Promise.all([
      echoWorker(teardown, 'a', ['ma']),
      echoWorker(teardown, 'b', ['mb']),
      echoWorker(teardown, 'c', ['mc']),
      echoWorker(teardown, 'evil', ['ma']),
    ]);
    const { url, adminUrl, gateway } = await startGateway(
      teardown,
      {
        server: { host: '127.0.0.1' },
        admin: { token: ADMIN_TOKEN },
        fleet: {
          health: { intervalMs: 100, timeoutMs: 300 },
          workers: [
            { id: 'a', url: a.url, models: ['ma'], apiKey: KEY_A },
            { id: 'b', url: b.url, models: ['mb'], apiKeyEnv: 'KVGATE_TEST_KEY_B' },
            { id: 'c', url: c.url, models: ['mc'] },
          ],
        },
        routing: { overrides: { workerHeader: true, strategyHeader: true } },
      },
      { KVGATE_TEST_KEY_B: KEY_B, KVGATE_LOG_LEVEL: 'trace' },
    );
    const evilHost = new URL(evil.url).host;
    const auth = { authorization: `Bearer ${CLIENT_SECRET}` };
    const completion = (model: string, extra: Record<string, unknown> = {}) =>
      JSON.stringify({ model, prompt: 'hi', ...extra });
    const answers: Answer[] = [];
    const keep = (x: Answer) => (answers.push(x), x);

    t.test('upstream auth: the worker key is sent, the client credential is not (default)', async (t) => {
      for (const [model, key] of [
        ['ma', `Bearer ${KEY_A}`],
        ['mb', `Bearer ${KEY_B}`],
        ['mc', undefined],
      ] as const) {
        const r = keep(await send(`${url}/v1/completions`, 'POST', auth, completion(model)));
        t.equal(r.status, 200);
        t.equal(echoed(r).headers.authorization, key, `${model}: worker sees ${key ?? 'no Authorization'}`);
      }
      // Pass-through rotates over the workers: each gets its own key, never the client's.
      const expected: Record<string, string | undefined> = { a: `Bearer ${KEY_A}`, b: `Bearer ${KEY_B}`, c: undefined };
      const seen = new Set<string>();
      for (let i = 0; i < 6; i++) {
        const r = keep(
          await send(`${url}/v1/audio/transcriptions`, 'POST', auth, JSON.stringify({ model: 'ma', input: 'x' })),
        );
        t.equal(r.status, 200);
        const e = echoed(r);
        seen.add(e.worker);
        t.equal(e.headers.authorization, expected[e.worker], `passthrough to ${e.worker}`);
      }
      t.same([...seen].sort(), ['a', 'b', 'c']);
    });

    t.test('x-forwarded-* is appended to, and Host is not trusted', async (t) => {
      const spoof = {
        'x-forwarded-for': '6.6.6.6',
        'x-forwarded-proto': 'https',
        'x-forwarded-host': evilHost,
        host: evilHost,
      };
      const routed = keep(await send(`${url}/v1/completions`, 'POST', spoof, completion('mc')));
      const pass = keep(await send(`${url}/v1/audio/transcriptions`, 'POST', spoof, JSON.stringify({ input: 'x' })));
      for (const [what, r] of [
        ['routed', routed],
        ['passthrough', pass],
      ] as const) {
        t.equal(r.status, 200, what);
        const h = echoed(r).headers;
        t.equal(h['x-forwarded-for'], '6.6.6.6, 127.0.0.1', `${what}: client address appended`);
        t.equal(h['x-forwarded-proto'], 'https, http', `${what}: proto appended`);
        t.equal(h['x-forwarded-host'], `${evilHost}, ${evilHost}`, `${what}: host appended`);
        t.not(h.host, evilHost, `${what}: the worker sees its own host`);
      }
      t.equal(evil.connections, 0, 'the Host header contacted nothing');
    });

    t.test('hop-by-hop headers are stripped both ways', async (t) => {
      const hop = {
        connection: 'keep-alive, x-hop',
        'x-hop': 'h',
        te: 'trailers',
        'proxy-authorization': 'Basic c2VjcmV0',
        'keep-alive': 'timeout=5',
        'x-kvgate-admin-token': ADMIN_TOKEN,
        'x-normal': 'n',
      };
      const routed = keep(await send(`${url}/v1/completions`, 'POST', hop, completion('mc', { hop_response: true })));
      const pass = keep(
        await send(`${url}/v1/audio/transcriptions`, 'POST', hop, JSON.stringify({ hop_response: true })),
      );
      for (const [what, r] of [
        ['routed', routed],
        ['passthrough', pass],
      ] as const) {
        t.equal(r.status, 200, what);
        const h = echoed(r).headers;
        for (const name of ['x-hop', 'te', 'proxy-authorization', 'keep-alive', 'x-kvgate-admin-token'])
          t.equal(h[name], undefined, `${what}: request ${name} dropped`);
        t.equal(h['x-normal'], 'n', `${what}: end-to-end header kept`);
        t.equal(r.headers['x-resp-hop'], undefined, `${what}: response header named in Connection dropped`);
        t.equal(r.headers['proxy-authenticate'], undefined, `${what}: response proxy-authenticate dropped`);
        t.equal(r.headers['x-resp-normal'], 'kept', `${what}: end-to-end response header kept`);
      }
    });

    t.test(
      'absolute-form targets, CONNECT, upgrades, worker pins and dot segments reach no other address',
      async (t) => {
        const body = completion('ma');
        for (const target of [
          `http://${evilHost}/v1/completions`,
          `http://${evilHost}/v1/audio/transcriptions`,
          `//${evilHost}/v1/completions`,
        ]) {
          const r = await rawExchange(url, [
            `POST ${target} HTTP/1.1\r\nhost: ${evilHost}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
          ]);
          t.equal(parseRaw(r.data).status, 404, target);
        }
        const conn = await rawExchange(url, [`CONNECT ${evilHost} HTTP/1.1\r\nhost: ${evilHost}\r\n\r\n`]);
        t.ok(conn.closed, 'CONNECT: closed');
        t.notMatch(conn.data, /^HTTP\/1\.1 200/, 'CONNECT: no tunnel');
        const up = await rawExchange(url, [
          `GET /v1/realtime HTTP/1.1\r\nhost: ${evilHost}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n`,
        ]);
        t.notMatch(up.data, /^HTTP\/1\.1 101/, 'no upgrade');
        const pin = keep(
          await send(
            `${url}/v1/completions`,
            'POST',
            { 'x-kvgate-worker': evil.url, 'x-kvgate-admin-token': ADMIN_TOKEN },
            body,
          ),
        );
        t.equal(pin.status, 400);
        t.match(JSON.parse(pin.body), { error: { code: 'unknown_worker' } });
        const pinNoToken = keep(await send(`${url}/v1/completions`, 'POST', { 'x-kvgate-worker': 'a' }, body));
        t.equal(pinNoToken.status, 403);
        const strat = keep(await send(`${url}/v1/completions`, 'POST', { 'x-kvgate-strategy': evil.url }, body));
        t.equal(strat.status, 400, 'an unknown strategy name is refused');
        for (const path of ['/v1/../admin', '/v1/%2e%2e/debug/workers', '/v1/x/%2E./y', '/v1/a%2f..%2fb', '/v1/.']) {
          const r = await rawExchange(url, [`GET ${path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n`]);
          t.equal(parseRaw(r.data).status, 400, path);
        }
        t.equal(evil.connections, 0, 'the evil server was never contacted');
        t.same(evil.seen, []);
      },
    );

    t.test('errors echo no secret', async (t) => {
      const routed = keep(await send(`${url}/v1/completions`, 'POST', auth, completion('ma', { reset_me: true })));
      t.equal(routed.status, 502);
      t.match(JSON.parse(routed.body), { error: { type: 'upstream_error' } });
      const pass = keep(await send(`${url}/v1/audio/transcriptions`, 'POST', auth, '{"reset_me":true}'));
      t.equal(pass.status, 502);
      const admin = await request(`${adminUrl}/debug/workers`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
      const adminText = await admin.body.text();
      t.equal(admin.statusCode, 200);
      t.notMatch(adminText, KEY_A, '/debug/workers shows no worker key');
      t.notMatch(adminText, KEY_B);
      // 2xx bodies here are the fake worker's echo; every 4xx/5xx body is the gateway's own.
      const errors = answers.filter((r) => r.status >= 400);
      t.ok(errors.length >= 5, `${errors.length} gateway error bodies checked`);
      for (const r of errors) {
        for (const s of [CLIENT_SECRET, KEY_A, KEY_B, ADMIN_TOKEN])
          t.notOk(r.body.includes(s), `${r.status} ${r.body.slice(0, 80)}: no ${s.slice(0, 8)}...`);
      }
    });

    t.test('logs redact every secret', async (t) => {
      await new Promise((r) => setTimeout(r, 300));
      const out = [...gateway.text, ...gateway.lines.map((l) => JSON.stringify(l))].join('\n');
      t.ok(gateway.lines.length > 3, `captured ${gateway.lines.length} log lines`);
      for (const s of [CLIENT_SECRET, ADMIN_TOKEN, KEY_A, KEY_B])
        t.notOk(out.includes(s), `no log line holds ${s.slice(0, 10)}...`);
    });
  },
);

t.test('passClientAuthorization: the client credential goes to workers without a key of their own', async (t) => {
  const teardown = t.teardown.bind(t);
  const [a, c] = await Promise.all([echoWorker(teardown, 'a', ['ma']), echoWorker(teardown, 'c', ['mc'])]);
  const { url } = await startGateway(teardown, {
    server: { host: '127.0.0.1' },
    upstream: { passClientAuthorization: true },
    fleet: {
      workers: [
        { id: 'a', url: a.url, models: ['ma'], apiKey: KEY_A },
        { id: 'c', url: c.url, models: ['mc'] },
      ],
    },
  });
  const auth = { authorization: `Bearer ${CLIENT_SECRET}` };
  const toC = await send(`${url}/v1/completions`, 'POST', auth, JSON.stringify({ model: 'mc', prompt: 'x' }));
  t.equal(echoed(toC).headers.authorization, `Bearer ${CLIENT_SECRET}`);
  const toA = await send(`${url}/v1/completions`, 'POST', auth, JSON.stringify({ model: 'ma', prompt: 'x' }));
  t.equal(echoed(toA).headers.authorization, `Bearer ${KEY_A}`, 'a worker key still wins');
  const seen = new Map<string, unknown>();
  for (let i = 0; i < 4; i++) {
    const e = echoed(await send(`${url}/v1/audio/transcriptions`, 'POST', auth, '{}'));
    seen.set(e.worker, e.headers.authorization);
  }
  t.same(
    Object.fromEntries(seen),
    { a: `Bearer ${KEY_A}`, c: `Bearer ${CLIENT_SECRET}` },
    'pass-through follows the same rule',
  );
});

t.test('a missing apiKeyEnv is a one-line start-up error', async (t) => {
  const { writeConfig } = await import('../../fixtures/gateway.js');
  const file = writeConfig(t.teardown.bind(t), {
    fleet: { workers: [{ id: 'w', url: 'http://127.0.0.1:1', models: ['m'], apiKeyEnv: 'KVGATE_SURELY_UNSET_KEY' }] },
  });
  const p = startCli(['serve', '--config', file, '--port', '0', '--admin-port', '0'], { KVGATE_SURELY_UNSET_KEY: '' });
  t.teardown(() => p.stop());
  t.equal(await p.exited, 2);
  t.match(p.text.join('\n'), /worker 'w': apiKeyEnv KVGATE_SURELY_UNSET_KEY is not set/);
});
