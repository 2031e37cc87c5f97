import t from 'tap';
import { createServer, type ServerResponse } from 'node:http';
import { createServer as createTcpServer, type AddressInfo } from 'node:net';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { request } from 'undici';
import { parseConfig } from '../../../config/load.js';
import { Fleet } from '../../../gateway/fleet/fleet.js';
import { startGateway, type Gateway } from '../../../gateway/gateway.js';
import { LoadSharing, loadSharingConfigSchema, type LoadTransport } from '../../../gateway/fleet/load-sharing.js';
import { startNats } from '../../fixtures/nats.js';

const log = pino({ level: 'silent' });
type Teardown = { teardown(fn: () => unknown): void };
const workers = [
  { id: 'w1', url: 'http://127.0.0.1:1', models: ['m'] },
  { id: 'w2', url: 'http://127.0.0.1:2', models: ['m'] },
];

/** An in-memory bus: every published snapshot reaches every subscriber, the sender included (as NATS does). */
function fakeBus() {
  const handlers: ((d: Uint8Array) => void)[] = [];
  const transport = (): LoadTransport => ({
    publish: (d) => {
      for (const h of [...handlers]) h(d);
    },
    subscribe: (h) => {
      handlers.push(h);
    },
    close: async () => {},
  });
  return { transport };
}

t.test('snapshots only (deltas: false): merge and expiry with a fake transport', async (t) => {
  let clock = 1000;
  const now = () => clock;
  const config = loadSharingConfigSchema.parse({
    nats: { servers: ['nats://unused'] },
    publishIntervalMs: 100,
    deltas: false,
    staleAfterMs: 500,
  });
  const bus = fakeBus();
  const replica = (id: string) => {
    const fleet = new Fleet(
      workers.map((w) => ({ ...w, role: 'both' as const, labels: {} })),
      { sharedLoad: true },
    );
    const registry = new Registry();
    const sharing = new LoadSharing({ fleet, transport: bus.transport(), config, log, replicaId: id, now, registry });
    sharing.start();
    t.teardown(() => {
      fleet.close();
      return sharing.close();
    });
    return { fleet, sharing, registry, w1: fleet.get('w1')!, w2: fleet.get('w2')! };
  };
  const a = replica('a');
  const b = replica('b');
  const c = replica('c');

  const ta = a.fleet.start(a.w1, 100, 7);
  a.fleet.start(a.w1, 50, 3);
  const tb = b.fleet.start(b.w1, 10, 2);
  b.fleet.firstToken(tb);
  c.fleet.start(c.w2, 40, 1);
  t.same(b.w1.load, b.w1.localLoad, 'before any snapshot, load is local only');

  a.sharing.publish();
  c.sharing.publish();
  t.equal(b.sharing.peers, 2, 'b hears a and c, not itself');
  t.same(
    b.w1.localLoad,
    { inflightRequests: 1, prefillRequests: 0, prefillTokens: 0, decodeRequests: 1, decodeBlocks: 2 },
    'local load untouched',
  );
  t.same(
    b.w1.load,
    { inflightRequests: 3, prefillRequests: 2, prefillTokens: 150, decodeRequests: 1, decodeBlocks: 2 },
    'w1: local + a',
  );
  t.same(
    b.w2.load,
    { inflightRequests: 1, prefillRequests: 1, prefillTokens: 40, decodeRequests: 0, decodeBlocks: 0 },
    'w2: c',
  );
  t.same(a.w1.load.inflightRequests, 2, 'a has not heard b yet');

  // Local changes show at once in the combined view, without waiting for a snapshot.
  b.fleet.finish(tb);
  t.same(b.w1.load, {
    inflightRequests: 2,
    prefillRequests: 2,
    prefillTokens: 150,
    decodeRequests: 0,
    decodeBlocks: 0,
  });
  // A new snapshot replaces the replica's previous one (not added to it).
  a.fleet.firstToken(ta);
  a.sharing.publish();
  t.same(b.w1.load, { inflightRequests: 2, prefillRequests: 1, prefillTokens: 50, decodeRequests: 1, decodeBlocks: 7 });

  // c goes quiet: after staleAfterMs its load no longer counts; a keeps publishing.
  clock += 400;
  a.sharing.publish();
  clock += 200;
  b.sharing.expire();
  t.equal(b.sharing.peers, 1, 'c expired');
  t.same(b.w2.load, b.w2.localLoad, 'w2 back to local only');
  t.equal(b.w1.load.inflightRequests, 2, 'a still counts');

  // Malformed snapshots are ignored, not thrown.
  for (const junk of ['{', '{"r":1}', 'null', '{"r":"z","w":{"w1":"x"}}'])
    b.sharing.receive(new TextEncoder().encode(junk));
  t.equal(b.w1.load.inflightRequests, 2);

  // A removed worker is drained on this replica's own requests only.
  b.fleet.remove('w1');
  t.same(b.w1.load, b.w1.localLoad, 'removed: remote share dropped');
  a.sharing.publish();
  t.equal(b.w1.load.inflightRequests, 0, 'and snapshots no longer reach it');

  const scrape = await b.registry.metrics();
  // a, plus 'z' whose snapshot parsed but carried no usable numbers.
  t.match(scrape, /kvgate_load_sharing_peers 2\b/);
  t.match(scrape, /kvgate_load_sharing_snapshots_total\{direction="received"\} 6\b/);
  t.match(scrape, /kvgate_load_sharing_snapshots_total\{direction="sent"\} 0\b/);
});

t.test('without load sharing, load is the local object itself', async (t) => {
  const fleet = new Fleet(workers.map((w) => ({ ...w, role: 'both' as const, labels: {} })));
  t.teardown(() => fleet.close());
  const w = fleet.get('w1')!;
  t.equal(w.load, w.localLoad);
  fleet.setRemoteLoad('w1', {
    inflightRequests: 5,
    prefillRequests: 5,
    prefillTokens: 5,
    decodeRequests: 0,
    decodeBlocks: 0,
  });
  t.equal(w.load.inflightRequests, 0, 'remote load has nowhere to go');
});

t.test('config: stale window must cover a couple of intervals', async (t) => {
  t.throws(
    () => loadSharingConfigSchema.parse({ nats: { servers: ['nats://x'] }, publishIntervalMs: 500, staleAfterMs: 600 }),
    /staleAfterMs/,
  );
  t.throws(() => loadSharingConfigSchema.parse({ nats: { servers: [] } }));
  t.throws(() => loadSharingConfigSchema.parse({ nats: { servers: ['nats://x'] }, subject: 'kvgate.>' }), /subject/);
  t.match(loadSharingConfigSchema.parse({ nats: { servers: ['nats://x'] } }), {
    subject: 'kvgate.load',
    publishIntervalMs: 500,
    deltas: true,
    staleAfterMs: 2000,
  });
});

async function freePort(): Promise<number> {
  const s = createTcpServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

const until = async (check: () => Promise<boolean> | boolean, ms = 10_000, what = 'condition') => {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`${what} not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 30));
  }
};

/** A worker that holds every completion until `release()`. */
async function holdingWorker(t: Teardown): Promise<{ url: string; held: () => number; release: () => void }> {
  const pending: ServerResponse[] = [];
  const server = createServer((req, res) => {
    if (req.url === '/health') return void res.writeHead(200).end();
    // The gateway reads each worker's model cards (LoRA adapters, gateway/fleet/adapters.ts): answer them as vLLM does.
    if (req.method === 'GET' && req.url === '/v1/models')
      return void res
        .writeHead(200, { 'content-type': 'application/json' })
        .end(JSON.stringify({ object: 'list', data: [{ id: 'm', object: 'model' }] }));
    req.resume();
    req.on('end', () => pending.push(res));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    held: () => pending.length,
    release: () => {
      for (const res of pending.splice(0))
        res
          .writeHead(200, { 'content-type': 'application/json' })
          .end(JSON.stringify({ id: 'x', object: 'text_completion', choices: [{ index: 0, text: 'ok' }] }));
    },
  };
}

type Workers = { workers: { id: string; load: { inflightRequests: number; prefillTokens: number } }[] };
const inflight = async (g: Gateway): Promise<Record<string, number>> => {
  const body = (await (await request(`${g.adminUrl}/debug/workers`)).body.json()) as Workers;
  return Object.fromEntries(body.workers.map((w) => [w.id, w.load.inflightRequests]));
};
const complete = (g: Gateway) =>
  request(`${g.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'm', prompt: 'hello there', max_tokens: 1 }),
  }).then((r) => ({ status: r.statusCode, worker: String(r.headers['x-kvgate-worker']) }));

t.test("two gateways over a real nats-server see each other's in-flight load", async (t) => {
  const nats = await startNats(t);
  const w1 = await holdingWorker(t);
  const w2 = await holdingWorker(t);
  const config = parseConfig(
    {
      server: { host: '127.0.0.1', port: 0 },
      admin: { port: 0 },
      fleet: {
        health: { intervalMs: 200, timeoutMs: 1000 },
        workers: [
          { id: 'w1', url: w1.url, models: ['m'] },
          { id: 'w2', url: w2.url, models: ['m'] },
        ],
      },
      routing: { strategy: 'least-load' },
      loadSharing: { nats: { servers: [nats] }, publishIntervalMs: 50, staleAfterMs: 600 },
    },
    'inline',
    {},
  );
  const a = await startGateway(config, { log, defaultMetrics: false });
  const b = await startGateway(config, { log, defaultMetrics: false });
  let aClosed = false;
  t.teardown(async () => {
    if (!aClosed) await a.close();
    await b.close();
  });
  await until(() => a.fleet.healthy.length === 2 && b.fleet.healthy.length === 2, 10_000, 'workers healthy');

  // Three requests held upstream through A: B's view of the workers must count them.
  const held = [complete(a), complete(a), complete(a)];
  await until(() => w1.held() + w2.held() === 3, 10_000, 'requests reach the workers');
  const viaA = await inflight(a);
  t.equal(viaA.w1! + viaA.w2!, 3);
  await until(async () => JSON.stringify(await inflight(b)) === JSON.stringify(viaA), 10_000, "B shows A's load");
  t.same(
    b.fleet.get('w1')!.localLoad.inflightRequests + b.fleet.get('w2')!.localLoad.inflightRequests,
    0,
    "B's own load is zero",
  );
  const scrape = await b.metrics.registry.metrics();
  t.match(scrape, /kvgate_load_sharing_peers 1\b/);
  t.match(scrape, /kvgate_load_sharing_snapshots_total\{direction="received"\} [1-9]/);

  // B routes its own request to the worker that is less loaded counting A's requests.
  const lighter = viaA.w1! < viaA.w2! ? 'w1' : 'w2';
  const fromB = complete(b);
  await until(() => w1.held() + w2.held() === 4, 10_000, "B's request reaches a worker");
  t.equal((await inflight(b))[lighter], viaA[lighter]! + 1, `B chose ${lighter}, the less loaded one fleet-wide`);

  w1.release();
  w2.release();
  const results = await Promise.all([...held, fromB]);
  t.same(
    results.map((r) => r.status),
    [200, 200, 200, 200],
  );
  await until(async () => Object.values(await inflight(b)).every((n) => n === 0), 10_000, 'B sees the load released');

  // A replica that goes away stops counting after staleAfterMs.
  a.fleet.start(a.fleet.get('w2')!, 10, 1);
  await until(async () => (await inflight(b)).w2 === 1, 10_000, "B sees A's new request");
  await a.close();
  aClosed = true;
  await until(async () => (await inflight(b)).w2 === 0, 10_000, "A's load expires on B");
});

t.test('NATS unreachable: the gateway starts and routes on its own load', async (t) => {
  const w1 = await holdingWorker(t);
  const port = await freePort();
  const config = parseConfig(
    {
      server: { host: '127.0.0.1', port: 0 },
      admin: { port: 0 },
      fleet: { health: { intervalMs: 200, timeoutMs: 1000 }, workers: [{ id: 'w1', url: w1.url, models: ['m'] }] },
      routing: { strategy: 'least-load' },
      loadSharing: { nats: { servers: [`nats://127.0.0.1:${port}`] } },
    },
    'inline',
    {},
  );
  const g = await startGateway(config, { log, defaultMetrics: false });
  t.teardown(() => g.close());
  await until(() => g.fleet.healthy.length === 1, 10_000, 'worker healthy');
  const res = complete(g);
  await until(() => w1.held() === 1, 10_000, 'request reaches the worker');
  t.equal((await inflight(g)).w1, 1);
  w1.release();
  t.equal((await res).status, 200);
});
