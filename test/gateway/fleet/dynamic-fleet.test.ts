import t from 'tap';
import { pino } from 'pino';
import { parseConfig } from '../../../config/load.js';
import { Fleet, type WorkerConfig } from '../../../gateway/fleet/fleet.js';
import { FleetSync } from '../../../gateway/fleet/fleet-sync.js';
import { Transport, upstreamConfigSchema } from '../../../gateway/proxy/forward.js';
import { poolSignature, restartOnlyChanges } from '../../../gateway/routing/reload.js';
import { createRoundRobinStrategy } from '../../../gateway/routing/strategies/round-robin.js';
import { createSessionStrategy } from '../../../gateway/routing/strategies/session.js';
import type { RouteContext } from '../../../gateway/routing/strategies/strategy.js';

const log = pino({ level: 'silent' });
const worker = (id: string, extra: Partial<WorkerConfig> = {}): WorkerConfig => ({
  id,
  url: `http://127.0.0.1:1/${id}`,
  models: ['m'],
  role: 'both',
  labels: {},
  ...extra,
});
const ctx = (sessionKey?: string): RouteContext => ({
  requestId: 'r',
  model: 'm',
  path: '/v1/completions',
  headers: {},
  sessionKey,
  promptTokens: 10,
  blocks: undefined,
  random: Math.random,
  now: Date.now,
});
const until = async (check: () => boolean, ms = 5000) => {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
};

t.test('add and remove: new candidate arrays, a removed worker drains until forgotten', async (t) => {
  const fleet = new Fleet([worker('a'), worker('b')], { log });
  t.teardown(() => fleet.close());
  for (const w of fleet.workers) fleet.setHealthy(w, true);
  const before = fleet.candidates('m');
  t.equal(fleet.candidates('m'), before, 'the same array until something changes');
  const downs: string[] = [];
  fleet.onStatus((w, up) => {
    if (!up) downs.push(w.id);
  });

  const c = fleet.add(worker('c', { models: ['m', 'n'] }));
  t.equal(c.available, false, 'an added worker waits for its health check');
  t.ok(fleet.servesModel('n'), 'its models are served');
  fleet.setHealthy(c, true);
  const three = fleet.candidates('m');
  t.not(three, before, 'membership change gives a new array');
  t.same(
    three.map((w) => w.id),
    ['a', 'b', 'c'],
  );
  t.same(
    before.map((w) => w.id),
    ['a', 'b'],
    'the old array is left as it was',
  );

  const a = fleet.workers[0]!;
  const ticket = fleet.start(a, 100, 2);
  t.equal(fleet.remove('a'), a);
  t.same(
    fleet.candidates('m').map((w) => w.id),
    ['b', 'c'],
    'out of routing at once',
  );
  t.equal(a.available, false);
  t.equal(fleet.get('a'), a, 'a request routed just before the removal still finds it');
  t.same(
    fleet.draining.map((w) => w.id),
    ['a'],
  );
  t.equal(fleet.has(a), false);
  fleet.setHealthy(a, false, 'gone');
  t.same(downs, [], 'no status events for a removed worker (its id may be reused)');
  fleet.finish(ticket);
  t.equal(a.load.inflightRequests, 0, 'load released on the same object');
  fleet.forget(a);
  t.equal(fleet.get('a'), undefined);
  t.throws(() => fleet.add(worker('b')), /already in the fleet/);

  // Same id again (a changed worker): the new object is a member, the old one drains.
  const b1 = fleet.get('b')!;
  fleet.remove('b');
  const b2 = fleet.add(worker('b', { url: 'http://127.0.0.1:2/' }));
  t.equal(fleet.get('b'), b1, 'until the new one is healthy, the id resolves to the draining one');
  fleet.setHealthy(b2, true);
  t.equal(fleet.get('b'), b2, 'then to the new one');
});

t.test('strategies with per-worker state follow a changing candidate list', async (t) => {
  const fleet = new Fleet(
    ['a', 'b', 'c', 'd'].map((id) => worker(id)),
    { log },
  );
  t.teardown(() => fleet.close());
  for (const w of fleet.workers) fleet.setHealthy(w, true);
  const session = createSessionStrategy({ virtualNodes: 64 });
  const keys = Array.from({ length: 200 }, (_, i) => `s${i}`);
  const owner = new Map(keys.map((k) => [k, session.choose(ctx(k), fleet.candidates('m')).worker.id]));
  fleet.remove('c');
  const moved = keys.filter((k) => session.choose(ctx(k), fleet.candidates('m')).worker.id !== owner.get(k));
  t.ok(moved.length > 0, 'sessions of the removed worker moved');
  t.ok(
    moved.every((k) => owner.get(k) === 'c'),
    'and only those: the ring was rebuilt for the new list',
  );
  t.ok(
    keys.every((k) => session.choose(ctx(k), fleet.candidates('m')).worker.id !== 'c'),
    'nobody is sent to the removed worker',
  );

  const rr = createRoundRobinStrategy();
  for (let i = 0; i < 5; i++) rr.choose(ctx(), fleet.candidates('m'));
  fleet.remove('a');
  fleet.remove('b');
  const ids = new Set(Array.from({ length: 6 }, () => rr.choose(ctx(), fleet.candidates('m')).worker.id));
  t.same([...ids], ['d'], "round-robin's cursor wraps over a shrunk list");
});

t.test('FleetSync: adds, removes, changes; hooks; drains before closing the pool', async (t) => {
  const fleet = new Fleet([worker('a'), worker('b')], { log });
  const transport = new Transport(fleet.workers, upstreamConfigSchema.parse({}));
  t.teardown(async () => {
    fleet.close();
    await transport.close();
  });
  for (const w of fleet.workers) fleet.setHealthy(w, true);
  const events: string[] = [];
  let changed = 0;
  const sync = new FleetSync(
    {
      fleet,
      transport,
      log,
      healthTimeoutMs: 100,
      drainTimeoutMs: 5000,
      healthProbe: async (w) => (w.id === 'sick' ? 'refused' : undefined),
      hooks: { added: async (w) => void events.push(`+${w.id}`), removed: async (id) => void events.push(`-${id}`) },
      onChanged: () => changed++,
    },
    fleet.workers.map((w) => worker(w.id)),
  );

  t.same(
    sync.setStatic([worker('a'), worker('b')]),
    { added: [], removed: [], changed: [] },
    'the same list is a no-op',
  );
  t.equal(changed, 0);
  const a = fleet.get('a')!;
  const ticket = fleet.start(a, 10, 1);
  const change = sync.setStatic([worker('b', { labels: { gpu: 'h100' } }), worker('c'), worker('sick')]);
  t.same(change, { added: ['c', 'sick'], removed: ['a'], changed: ['b'] });
  t.equal(changed, 1);
  t.same(events.sort(), ['+b', '+c', '+sick', '-a', '-b']);
  await until(() => fleet.get('c')?.available === true);
  t.equal(fleet.get('sick')!.available, false, 'a worker failing its first probe takes no traffic');
  t.same(fleet.get('b')!.labels, { gpu: 'h100' });

  await new Promise((r) => setTimeout(r, 300));
  t.equal(sync.draining, 1, 'a (a request in flight) is still draining; b (none) is done');
  t.ok(fleet.draining.some((w) => w === a));
  fleet.finish(ticket);
  await sync.settled();
  t.equal(fleet.draining.length, 0, 'drained and forgotten once its request finished');

  const d = sync.setDiscovered([
    {
      id: 'pod-1',
      url: 'http://10.0.0.1:8000',
      models: ['m'],
      role: 'both',
      labels: {},
      kvEvents: { endpoint: 'tcp://10.0.0.1:5557' },
    },
    { id: 'bad id!', url: 'http://10.0.0.2:8000', models: ['m'], role: 'both', labels: {} },
    { id: 'c', url: 'http://10.0.0.3:8000', models: ['m'], role: 'both', labels: {} },
  ]);
  t.same(
    d,
    { added: ['pod-1'], removed: [], changed: [] },
    'static entries win over discovered ones with the same id; invalid ones are skipped',
  );
  t.same(
    fleet.get('pod-1')!.kvEvents,
    {
      type: 'zmq',
      endpoint: 'tcp://10.0.0.1:5557',
      topic: '',
      mode: 'connect',
      replayTimeoutMs: 2000,
      format: 'msgpack',
      probeIntervalMs: 5000,
    },
    'parsed with the fleet schema',
  );
  t.equal(sync.discoveredCount, 2);
  t.same(sync.setDiscovered([]), { added: [], removed: ['pod-1'], changed: [] });
  sync.close();
});

t.test('config: discovery makes fleet.workers optional; pool signatures; restart-only keys', async (t) => {
  t.throws(() => parseConfig({ fleet: {} }, 'k.yaml', {}), /fleet\.workers: needs at least one worker/);
  t.throws(
    () => parseConfig({ fleet: { discovery: { type: 'static' } } }, 'k.yaml', {}),
    /fleet\.workers: needs at least one worker/,
  );
  const c = parseConfig(
    { fleet: { discovery: { type: 'dns', name: 'vllm.ns.svc', port: 8000, models: ['m'] } } },
    'k.yaml',
    {},
  );
  t.same(c.fleet.workers, []);
  t.equal(c.fleet.discovery?.type, 'dns');
  t.throws(
    () => parseConfig({ fleet: { discovery: { type: 'dns', port: 8000, models: ['m'] } } }, 'k.yaml', {}),
    /fleet\.discovery/,
  );

  const routing = parseConfig(
    { fleet: { workers: [worker('a')] }, routing: { pools: { big: { labels: { gpu: 'h100' } } } } },
    'k.yaml',
    {},
  ).routing;
  const s1 = poolSignature(routing, [
    { id: 'a', labels: {} },
    { id: 'b', labels: { gpu: 'h100' } },
  ]);
  t.equal(
    poolSignature(routing, [
      { id: 'b', labels: { gpu: 'h100' } },
      { id: 'c', labels: {} },
    ]),
    s1,
    'unchanged when no member moves',
  );
  t.not(
    poolSignature(routing, [
      { id: 'b', labels: { gpu: 'h100' } },
      { id: 'c', labels: { gpu: 'h100' } },
    ]),
    s1,
  );
  t.equal(poolSignature(c.routing, [{ id: 'a', labels: {} }]), '', 'no pools, no signature');

  const before = parseConfig({ fleet: { workers: [worker('a')] } }, 'k.yaml', {});
  const after = parseConfig(
    { server: { port: 9999 }, fleet: { workers: [worker('b')] }, routing: { strategy: 'round-robin' } },
    'k.yaml',
    {},
  );
  t.same(restartOnlyChanges(before, after), ['server'], 'workers and routing reload; the listen port does not');
});
