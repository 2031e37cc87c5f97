import t from 'tap';
import {
  createDiscovery,
  diffWorkers,
  discoveryConfigSchema,
  type DiscoveredWorker,
} from '../../../../gateway/fleet/discovery/discovery.js';
import { DnsDiscovery, dnsDiscoveryConfigSchema, type DnsResolver } from '../../../../gateway/fleet/discovery/dns.js';
import { StaticDiscovery, type StaticWorker } from '../../../../gateway/fleet/discovery/static.js';

/** A resolver whose answers the test sets; every call is counted. */
class StubResolver implements DnsResolver {
  v4: string[] | Error = [];
  v6: string[] | Error = [];
  calls = 0;
  async resolve4(): Promise<string[]> {
    this.calls++;
    if (this.v4 instanceof Error) throw this.v4;
    return [...this.v4];
  }
  async resolve6(): Promise<string[]> {
    this.calls++;
    if (this.v6 instanceof Error) throw this.v6;
    return [...this.v6];
  }
}

const dnsError = (code: string) => Object.assign(new Error(`query failed: ${code}`), { code });

/** Collects emissions; `next()` resolves with the next one. */
function recorder() {
  const seen: DiscoveredWorker[][] = [];
  let waiting: ((w: DiscoveredWorker[]) => void) | undefined;
  return {
    seen,
    onChange: (w: DiscoveredWorker[]) => {
      seen.push(w);
      waiting?.(w);
      waiting = undefined;
    },
    next: () => new Promise<DiscoveredWorker[]>((resolve) => (waiting = resolve)),
  };
}

const config = (extra: Record<string, unknown> = {}) =>
  dnsDiscoveryConfigSchema.parse({
    type: 'dns',
    name: 'vllm.inference.svc.cluster.local',
    port: 8000,
    intervalMs: 100,
    models: ['Qwen/Qwen3-8B'],
    kvEvents: { port: 5557, replayPort: 5558, topic: 'kv-events' },
    ...extra,
  });

t.test('records become workers; changes are emitted with added and removed workers', async (t) => {
  const resolver = new StubResolver();
  resolver.v4 = ['10.0.0.12', '10.0.0.11'];
  resolver.v6 = dnsError('ENODATA');
  const d = new DnsDiscovery(config(), { resolver });
  const rec = recorder();
  t.teardown(() => d.stop());
  await d.start(rec.onChange);
  t.equal(rec.seen.length, 1, 'start resolves after the first emission');
  t.same(rec.seen[0], [
    {
      id: 'vllm-10.0.0.11',
      url: 'http://10.0.0.11:8000',
      models: ['Qwen/Qwen3-8B'],
      role: 'both',
      labels: {},
      kvEvents: { endpoint: 'tcp://10.0.0.11:5557', replayEndpoint: 'tcp://10.0.0.11:5558', topic: 'kv-events' },
    },
    {
      id: 'vllm-10.0.0.12',
      url: 'http://10.0.0.12:8000',
      models: ['Qwen/Qwen3-8B'],
      role: 'both',
      labels: {},
      kvEvents: { endpoint: 'tcp://10.0.0.12:5557', replayEndpoint: 'tcp://10.0.0.12:5558', topic: 'kv-events' },
    },
  ]);

  // Same records in another order: no emission. Wait for a few polls to be sure.
  resolver.v4 = ['10.0.0.11', '10.0.0.12'];
  const calls = resolver.calls;
  while (resolver.calls < calls + 6) await new Promise((r) => setTimeout(r, 20));
  t.equal(rec.seen.length, 1, 'no emission while the records are the same');

  // One worker scaled away, one added (IPv6 this time).
  const next = rec.next();
  resolver.v4 = ['10.0.0.11'];
  resolver.v6 = ['fd00::7'];
  const after = await next;
  const diff = diffWorkers(rec.seen[0]!, after);
  t.same(
    diff.added.map((w) => w.id),
    ['vllm-fd00::7'],
  );
  t.same(
    diff.removed.map((w) => w.id),
    ['vllm-10.0.0.12'],
  );
  t.same(diff.changed, []);
  const v6 = after.find((w) => w.id === 'vllm-fd00::7')!;
  t.equal(v6.url, 'http://[fd00::7]:8000', 'IPv6 addresses are bracketed in URLs');
  t.equal(v6.kvEvents?.endpoint, 'tcp://[fd00::7]:5557', 'and in ZeroMQ endpoints');
});

t.test('a failed lookup keeps the fleet; NXDOMAIN empties it', async (t) => {
  const resolver = new StubResolver();
  resolver.v4 = ['10.0.0.11'];
  const d = new DnsDiscovery(config({ family: 'ipv4' }), { resolver });
  const rec = recorder();
  t.teardown(() => d.stop());
  await d.start(rec.onChange);
  t.equal(rec.seen[0]!.length, 1);

  resolver.v4 = dnsError('ETIMEOUT');
  const calls = resolver.calls;
  while (resolver.calls < calls + 3) await new Promise((r) => setTimeout(r, 20));
  t.equal(rec.seen.length, 1, 'a timeout is not "no workers"');

  const next = rec.next();
  resolver.v4 = dnsError('ENOTFOUND');
  t.same(await next, [], 'a name with no records is an empty fleet');
  t.equal(resolver.calls >= calls + 4, true);
});

t.test('stop ends polling; no emission after it', async (t) => {
  const resolver = new StubResolver();
  resolver.v4 = ['10.0.0.1'];
  const d = new DnsDiscovery(config({ family: 'ipv4', intervalMs: 100 }), { resolver });
  const rec = recorder();
  await d.start(rec.onChange);
  await d.stop();
  const calls = resolver.calls;
  resolver.v4 = ['10.0.0.2'];
  await new Promise((r) => setTimeout(r, 350));
  t.equal(resolver.calls, calls, 'no lookup after stop');
  t.equal(rec.seen.length, 1);
});

t.test('the discovery config schema: dns, kubernetes and static, with clear errors', async (t) => {
  t.equal(discoveryConfigSchema.parse({ type: 'dns', name: 'vllm', port: 8000, models: ['m'] }).type, 'dns');
  t.equal(
    discoveryConfigSchema.safeParse({ type: 'dns', name: 'vllm', models: ['m'] }).success,
    false,
    'dns needs a port',
  );
  t.equal(
    discoveryConfigSchema.safeParse({ type: 'dns', name: 'vllm', port: 8000, models: ['m'], typo: 1 }).success,
    false,
    'unknown keys are errors',
  );
  const k = discoveryConfigSchema.safeParse({ type: 'kubernetes', models: ['m'] });
  t.equal(k.success, false);
  t.match(k.error?.issues[0]?.message, /needs `service` or `labelSelector`/);
  const parsed = discoveryConfigSchema.parse({ type: 'kubernetes', service: 'vllm', models: ['m'] });
  t.equal(parsed.type === 'kubernetes' && parsed.watchTimeoutSeconds, 290);
  t.equal(discoveryConfigSchema.parse({ type: 'static' }).type, 'static');
});

t.test('static discovery emits the configured list once, through the factory too', async (t) => {
  const workers: StaticWorker[] = [
    {
      id: 'a',
      url: 'http://10.0.0.1:8000',
      models: ['m'],
      role: 'both',
      labels: { pool: 'x' },
      kvEvents: { type: 'zmq', endpoint: 'tcp://10.0.0.1:5557', topic: '', mode: 'connect' },
    },
    {
      id: 'b',
      url: 'http://10.0.0.2:8000',
      models: ['m'],
      role: 'decode',
      labels: {},
      kvEvents: { type: 'trtllm-http', intervalMs: 100 },
    },
  ];
  const d = createDiscovery({ type: 'static' }, { staticWorkers: workers });
  t.type(d, StaticDiscovery);
  const rec = recorder();
  await d.start(rec.onChange);
  await d.stop();
  t.same(rec.seen, [
    [
      {
        id: 'a',
        url: 'http://10.0.0.1:8000',
        models: ['m'],
        role: 'both',
        labels: { pool: 'x' },
        kvEvents: { endpoint: 'tcp://10.0.0.1:5557', topic: '' },
      },
      { id: 'b', url: 'http://10.0.0.2:8000', models: ['m'], role: 'decode', labels: {} },
    ],
  ]);
});

t.test('diffWorkers reports a changed worker under the same id', async (t) => {
  const a: DiscoveredWorker = { id: 'p-0', url: 'http://10.0.0.1:8000', models: ['m'], role: 'both', labels: {} };
  const d = diffWorkers([a], [{ ...a, role: 'prefill' }]);
  t.same(d, { added: [], removed: [], changed: [{ ...a, role: 'prefill' }] });
  t.same(diffWorkers([a], [{ ...a, labels: {} }]), { added: [], removed: [], changed: [] });
});
