import t from 'tap';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { request } from 'undici';
import { parseConfig } from '../../../config/load.js';
import { startGateway, type Gateway } from '../../../gateway/gateway.js';

const log = pino({ level: 'silent' });

/** A worker that answers health checks and any completion with its own name. */
async function fakeWorker(t: { teardown(fn: () => unknown): void }, name: string): Promise<string> {
  const server = createServer((req, res) => {
    if (req.url === '/health') return void res.writeHead(200).end();
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id: 'x', object: 'text_completion', choices: [{ index: 0, text: name }] }));
    });
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
}

async function complete(g: Gateway): Promise<{ status: number; worker: string; strategy: string; body: string }> {
  const res = await request(`${g.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'm', prompt: 'hi', max_tokens: 1 }),
  });
  return {
    status: res.statusCode,
    worker: String(res.headers['x-kvgate-worker']),
    strategy: String(res.headers['x-kvgate-strategy']),
    body: await res.body.text(),
  };
}

const until = async (check: () => Promise<boolean> | boolean, ms = 5000) => {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
};

t.test('discovery with a label pool: 503 until a labelled worker appears, then routing is rebuilt', async (t) => {
  const url = await fakeWorker(t, 'p1');
  const config = parseConfig(
    {
      server: { host: '127.0.0.1', port: 0 },
      admin: { port: 0 },
      fleet: {
        health: { intervalMs: 100, timeoutMs: 500 },
        discovery: { type: 'dns', name: 'vllm.test', port: 1, models: ['m'] },
      },
      routing: {
        strategy: 'round-robin',
        pools: { big: { labels: { gpu: 'h100' } } },
        policies: [{ match: { model: 'm' }, pool: 'big' }],
      },
    },
    'inline',
    {},
  );
  const g = await startGateway(config, { log, defaultMetrics: false });
  t.teardown(() => g.close());
  const before = await complete(g);
  t.equal(before.status, 503, 'no worker yet');
  t.match(before.body, /routing is not ready/);

  g.setDiscovered([{ id: 'plain', url, models: ['m'], role: 'both', labels: {} }]);
  await until(() => g.fleet.get('plain')?.available === true);
  t.equal((await complete(g)).status, 503, 'a worker outside the pool does not make the pool servable');

  g.setDiscovered([
    { id: 'plain', url, models: ['m'], role: 'both', labels: {} },
    { id: 'big-1', url, models: ['m'], role: 'both', labels: { gpu: 'h100' } },
  ]);
  await until(() => g.fleet.get('big-1')?.available === true);
  const after = await complete(g);
  t.equal(after.status, 200, 'the pool has a member: routing rebuilt');
  t.equal(after.worker, 'big-1', 'and the policy keeps requests inside the pool');
});

t.test('reload: an invalid routing for the new fleet is rejected and nothing changes', async (t) => {
  const a = await fakeWorker(t, 'a');
  const b = await fakeWorker(t, 'b');
  const raw = (
    workers: { id: string; url: string; labels?: Record<string, string> }[],
    routing: Record<string, unknown>,
  ) =>
    parseConfig(
      {
        server: { host: '127.0.0.1', port: 0 },
        admin: { port: 0 },
        fleet: { health: { intervalMs: 100 }, workers: workers.map((w) => ({ models: ['m'], ...w })) },
        routing,
      },
      'inline',
      {},
    );
  const g = await startGateway(raw([{ id: 'a', url: a }], { strategy: 'least-load' }), { log, defaultMetrics: false });
  t.teardown(() => g.close());
  t.equal((await complete(g)).strategy, 'least-load');

  // The pool needs a worker the new list does not have: rejected before the fleet is touched.
  t.throws(
    () => g.reload(raw([{ id: 'b', url: b }], { strategy: 'round-robin', pools: { x: { workers: ['a'] } } })),
    /routing\.pools\.x\.workers: unknown worker 'a'/,
  );
  t.same(
    g.fleet.workers.map((w) => w.id),
    ['a'],
    'the fleet is unchanged',
  );
  t.equal((await complete(g)).strategy, 'least-load', 'and so is the routing');

  const s = g.reload(
    raw(
      [
        { id: 'a', url: a },
        { id: 'b', url: b, labels: { tier: 'x' } },
      ],
      { strategy: 'round-robin', pools: { x: { labels: { tier: 'x' } } } },
    ),
  );
  t.same(
    { added: s.added, removed: s.removed, strategy: s.strategy, needsRestart: s.needsRestart },
    { added: ['b'], removed: [], strategy: 'round-robin', needsRestart: [] },
  );
  await until(() => g.fleet.get('b')?.available === true);
  const seen = new Set<string>();
  for (let i = 0; i < 4; i++) {
    const r = await complete(g);
    t.equal(r.strategy, 'round-robin');
    seen.add(r.worker);
  }
  t.same([...seen].sort(), ['a', 'b']);
});
