import t from 'tap';
import { workersFromSlices, type ObjectMeta } from '../../../../gateway/fleet/discovery/endpoint-slices.js';
import { kubernetesDiscoveryConfigSchema } from '../../../../gateway/fleet/discovery/kubernetes.js';
import { slice } from '../../../fixtures/fake-kube-api.js';

/** InferencePool `targetPorts`: one worker per Pod IP and port, so data-parallel ranks are separate endpoints. */
const defaults = { scheme: 'http' as const, models: ['m'], role: 'both' as const, labels: {} };

void t.test('several target ports: one distinct worker per pod and port, KV event ports offset by rank', async (t) => {
  const pods = new Map<string, ObjectMeta>([
    ['vllm-0', { name: 'vllm-0', annotations: { 'kvgate.io/kv-events-port': '5557' } }],
  ]);
  const dual = slice('vllm-v6', [['vllm-0', 'fd00::1', true]], { addressType: 'IPv6' });
  const { workers, problems } = workersFromSlices(
    [
      slice('vllm-a', [
        ['vllm-0', '10.0.0.1', true],
        ['vllm-1', '10.0.0.2', true],
        ['vllm-2', '10.0.0.3', false],
      ]),
      dual,
    ],
    pods,
    { ...defaults, targetPorts: [8000, 8001], kvEvents: { port: 6000, replayPort: 7000 } },
  );
  t.same(problems, []);
  t.same(
    workers.map((w) => [w.id, w.url]),
    [
      ['vllm-0-8000', 'http://10.0.0.1:8000'],
      ['vllm-0-8001', 'http://10.0.0.1:8001'],
      ['vllm-1-8000', 'http://10.0.0.2:8000'],
      ['vllm-1-8001', 'http://10.0.0.2:8001'],
    ],
    'every ready pod IP times every port; the IPv6 slice of the same pods adds none; the unready pod none',
  );
  t.same(
    workers.map((w) => w.kvEvents),
    [
      { endpoint: 'tcp://10.0.0.1:5557', replayEndpoint: 'tcp://10.0.0.1:7000' },
      { endpoint: 'tcp://10.0.0.1:5558', replayEndpoint: 'tcp://10.0.0.1:7001' },
      { endpoint: 'tcp://10.0.0.2:6000', replayEndpoint: 'tcp://10.0.0.2:7000' },
      { endpoint: 'tcp://10.0.0.2:6001', replayEndpoint: 'tcp://10.0.0.2:7001' },
    ],
    "each rank's KV events on the base port plus its rank (the pod annotation over the config)",
  );

  const one = workersFromSlices([slice('vllm-a', [['vllm-0', '10.0.0.1', true]])], pods, {
    ...defaults,
    targetPorts: [9000],
  });
  t.same(
    one.workers.map((w) => [w.id, w.url]),
    [['vllm-0', 'http://10.0.0.1:9000']],
    'one target port keeps the pod name as the id and needs no port in the slice',
  );
});

void t.test('the targetPorts config: 1 to 8 unique numbers, not with port', async (t) => {
  const base = { type: 'kubernetes', labelSelector: 'kvgate.io/pool=p', models: ['m'] };
  const ok = kubernetesDiscoveryConfigSchema.safeParse({ ...base, targetPorts: [{ number: 8000 }, { number: 8001 }] });
  t.ok(ok.success);
  const bad = (extra: object) => kubernetesDiscoveryConfigSchema.safeParse({ ...base, ...extra }).error?.issues[0];
  t.match(bad({ targetPorts: [] }), { path: ['targetPorts'] }, 'empty');
  t.match(bad({ targetPorts: Array.from({ length: 9 }, (_, i) => ({ number: 8000 + i })) }), { path: ['targetPorts'] });
  t.match(bad({ targetPorts: [{ number: 8000 }, { number: 8000 }] }), { message: 'port numbers must be unique' });
  t.match(bad({ targetPorts: [{ number: 8000 }], port: 8000 }), { message: /`port` or `targetPorts`/ });
  t.match(bad({ targetPorts: [{ number: 8000, name: 'x' }] }), { path: ['targetPorts', 0] }, 'unknown field');
});
