import t from 'tap';
import { EventEmitter } from 'node:events';
import { createServer, type IncomingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Fleet } from '../../../gateway/fleet/fleet.js';
import { GatewayMetrics } from '../../../gateway/ops/metrics.js';
import { forward, type Collected } from '../../../gateway/proxy/forward.js';
import { Transport, upstreamConfigSchema } from '../../../gateway/proxy/transport.js';
import { rerouter } from '../../../gateway/proxy/retry.js';
import type { Decision, RouteContext, Strategy } from '../../../gateway/routing/strategies/strategy.js';

/**
 * A collecting job (the prefill leg of P/D disaggregation) through the one
 * forwarding engine, against in-process workers: the body is read whole and
 * judged, a bad answer moves to the next worker, breakers are fed, the
 * data-parallel rank of each attempt's decision is sent, nothing is written
 * to the client.
 */
type Answer = (headers: IncomingHttpHeaders, res: ServerResponse) => void;

async function worker(t: { teardown(fn: () => unknown): void }, answer: Answer) {
  const seen: IncomingHttpHeaders[] = [];
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      seen.push(req.headers);
      answer(req.headers, res);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

const json =
  (status: number, body: unknown): Answer =>
  (_h, res) => {
    res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  };

function rig(t: { teardown(fn: () => unknown): void }, urls: string[], breaker = { failureThreshold: 1 }) {
  const fleet = new Fleet(
    urls.map((url, i) => ({ id: `w${i}`, url, models: ['m'], role: 'prefill' as const, labels: {} })),
    { breaker: { enabled: true, openMs: 60_000, ...breaker } },
  );
  for (const w of fleet.workers) fleet.setHealthy(w, true);
  t.teardown(() => fleet.close());
  const config = upstreamConfigSchema.parse({ retry: { attempts: 3, backoffMs: 1 } });
  const transport = new Transport(fleet.workers, config);
  t.teardown(() => transport.close());
  const metrics = new GatewayMetrics(fleet, { defaultMetrics: false });
  // Always the first remaining worker, pinned to rank 3 + its index.
  const strategy: Strategy = {
    name: 'first',
    choose: (_ctx, c): Decision => ({ worker: c[0]!, explain: {}, dataParallelRank: 3 + Number(c[0]!.id.slice(1)) }),
  };
  const ctx = { requestId: 'r' } as RouteContext;
  const run = (check: (status: number, body: Buffer) => { kind: 'no_params'; message: string } | undefined) =>
    new Promise<Collected>((resolve) => {
      const res = Object.assign(new EventEmitter(), { destroyed: false }) as unknown as ServerResponse;
      const first = fleet.workers[0]!;
      forward(
        { fleet, metrics, transport, random: () => 0.5 },
        {
          worker: first,
          ticket: fleet.start(first, 100, 8),
          strategy: 'first',
          route: 'completions',
          path: '/v1/completions',
          headers: {},
          body: Buffer.from('{"prompt":"x"}'),
          requestId: 'r',
          responseHeaders: {},
          started: 0,
          dataParallelRank: 3,
          reroute: rerouter(fleet, { ctx, strategy, candidates: fleet.workers }),
          collect: { check, done: resolve },
        },
        { 'x-request-id': 'r' },
        res,
      );
    });
  return { fleet, run };
}

const needsParams = (status: number, body: Buffer) =>
  status === 200 && !('kv_transfer_params' in (JSON.parse(body.toString()) as object))
    ? { kind: 'no_params' as const, message: 'no params' }
    : undefined;

void t.test(
  'a bad answer and a 503 move on; the breakers hear of both; each attempt has its own DP rank',
  async (t) => {
    const a = await worker(t, json(200, { choices: [] }));
    const b = await worker(t, json(503, { error: 'busy' }));
    const c = await worker(t, json(200, { kv_transfer_params: { remote_block_ids: [1] } }));
    const { fleet, run } = rig(t, [a.url, b.url, c.url]);
    const r = await run(needsParams);
    t.ok(r.ok);
    if (!r.ok) return;
    t.equal(r.worker.id, 'w2');
    t.same(JSON.parse(r.body.toString()), { kv_transfer_params: { remote_block_ids: [1] } });
    t.same(
      [a, b, c].map((w) => w.seen[0]!['x-data-parallel-rank']),
      ['3', '4', '5'],
    );
    t.equal(c.seen[0]!['content-length'], '14');
    t.equal(fleet.get('w0')!.breaker.state, 'closed', 'a 200 without params is no fault of the worker');
    t.equal(fleet.get('w1')!.breaker.state, 'open', 'a 503 is');
    t.equal(fleet.get('w2')!.load.inflightRequests, 0, 'load released');
  },
);

void t.test('a 4xx is handed back, not retried', async (t) => {
  const a = await worker(t, json(400, { error: { message: 'bad' } }));
  const b = await worker(t, json(200, { kv_transfer_params: {} }));
  const { run } = rig(t, [a.url, b.url]);
  const r = await run(needsParams);
  t.match(r, { ok: true, status: 400 });
  t.equal(b.seen.length, 0);
});

void t.test('every worker failing: the last failure, nothing written', async (t) => {
  const a = await worker(t, json(200, {}));
  const { fleet, run } = rig(t, [a.url, 'http://127.0.0.1:1']);
  const r = await run(needsParams);
  t.match(r, { ok: false, status: 502, failure: { kind: 'connect' } });
  t.equal(fleet.get('w1')!.breaker.state, 'open');
  t.equal(fleet.get('w0')!.load.inflightRequests + fleet.get('w1')!.load.inflightRequests, 0);
});
