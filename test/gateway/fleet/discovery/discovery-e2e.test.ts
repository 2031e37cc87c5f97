import t from 'tap';
import { request } from 'undici';
import { QWEN3_TOKENIZER_DIR } from '../../../fixtures/processes.js';
import { FakeKubeApi, slice } from '../../../fixtures/fake-kube-api.js';
import {
  eventually,
  metricValue,
  MODEL,
  startGateway,
  startSim,
  writeConfig,
  type SimWorkerLine,
} from '../../../fixtures/gateway.js';
import { debugWorkers } from '../../../fixtures/resilience.js';

const NS = 'inference';
const TOKEN = 'lifecycle-test-token-0123';
const port = (url: string) => Number(url.slice(url.lastIndexOf(':') + 1));

/** One EndpointSlice per simulated worker: its own HTTP port, its Pod carrying the KV event ports. */
function expose(api: FakeKubeApi, pod: string, w: SimWorkerLine, ready: boolean): ReturnType<typeof slice> {
  api.pods.set(pod, {
    name: pod,
    uid: `uid-${pod}`,
    labels: { app: 'vllm' },
    annotations: {
      'kvgate.io/kv-events-port': String(port(w.kvEvents!)),
      'kvgate.io/kv-replay-port': String(port(w.kvReplay!)),
    },
  });
  return slice(`vllm-${pod}`, [[pod, '127.0.0.1', ready]], {
    ports: [{ name: 'http', port: port(w.url), protocol: 'TCP' }],
  });
}

async function chat(url: string): Promise<string> {
  const res = await request(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, max_tokens: 3, messages: [{ role: 'user', content: 'hello there' }] }),
  });
  await res.body.dump();
  if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`);
  return String(res.headers['x-kvgate-worker']);
}

t.test(
  'Kubernetes discovery: workers appear and disappear in /debug/workers, routing follows, changes are counted',
  async (t) => {
    const api = new FakeKubeApi(NS, TOKEN);
    const apiPort = await api.listen();
    t.teardown(() => api.close());
    const { workers } = await startSim(t.teardown.bind(t), 2, [
      '--kv-events',
      'tcp://127.0.0.1:*',
      '--kv-events-replay',
      'tcp://127.0.0.1:*',
    ]);
    const [w0, w1] = workers as [SimWorkerLine, SimWorkerLine];
    api.setQuietly(expose(api, 'vllm-0', w0, true));
    const kubeconfig = writeConfig(
      t.teardown.bind(t),
      `apiVersion: v1
kind: Config
current-context: test
contexts: [{ name: test, context: { cluster: fake, user: gw, namespace: ${NS} } }]
clusters: [{ name: fake, cluster: { server: "http://127.0.0.1:${apiPort}" } }]
users: [{ name: gw, user: { token: ${TOKEN} } }]
`,
      'kubeconfig',
    );
    const g = await startGateway(t.teardown.bind(t), {
      server: { host: '127.0.0.1' },
      fleet: {
        health: { intervalMs: 200, timeoutMs: 500 },
        discovery: {
          type: 'kubernetes',
          service: 'vllm',
          kubeconfig,
          models: [MODEL],
          backoff: { initialMs: 20, maxMs: 200 },
        },
      },
      models: { [MODEL]: { tokenizer: { type: 'local', dir: QWEN3_TOKENIZER_DIR }, blockSize: w0.blockSize } },
      routing: { strategy: 'round-robin' },
    });
    await g.gateway.waitFor('discovery started', 1, 10_000);
    await api.watching();
    await eventually(
      async () => (await debugWorkers(g.adminUrl)).workers.find((w) => w.id === 'vllm-0')?.available,
      10_000,
    );
    t.equal(await chat(g.url), 'vllm-0', 'a discovered worker serves requests');

    api.push('ADDED', expose(api, 'vllm-1', w1, true));
    await eventually(
      async () => (await debugWorkers(g.adminUrl)).workers.find((w) => w.id === 'vllm-1')?.available,
      10_000,
    );
    const seen = new Set<string>();
    for (let i = 0; i < 6; i++) seen.add(await chat(g.url));
    t.same([...seen].sort(), ['vllm-0', 'vllm-1'], 'routing follows: both workers take traffic');
    await eventually(
      async () => (await debugWorkers(g.adminUrl)).index?.workers?.['vllm-1']?.events?.connected,
      10_000,
    );
    t.pass("the added worker's KV event stream is subscribed");

    // vllm-0 turns unready: it leaves the fleet (drained), its event source and index entries go.
    api.push('MODIFIED', expose(api, 'vllm-0', w0, false));
    await eventually(async () => !(await debugWorkers(g.adminUrl)).workers.some((w) => w.id === 'vllm-0'), 10_000);
    const after = new Set<string>();
    for (let i = 0; i < 6; i++) after.add(await chat(g.url));
    t.same([...after], ['vllm-1'], 'and no request goes to the removed one');
    await g.gateway.waitFor('worker drained', 1, 10_000);
    const dbg = await debugWorkers(g.adminUrl);
    t.notOk(dbg.index?.workers?.['vllm-0']?.events, 'its event source is stopped');

    const metrics = await (await request(`${g.url}/metrics`)).body.text();
    t.equal(metricValue(metrics, 'kvgate_discovery_changes_total', { kind: 'added' }), 2);
    t.equal(metricValue(metrics, 'kvgate_discovery_changes_total', { kind: 'removed' }), 1);
    t.equal(metricValue(metrics, 'kvgate_discovered_workers'), 1);
    t.equal(metricValue(metrics, 'kvgate_fleet_workers'), 1);
    t.equal(
      metricValue(metrics, 'kvgate_worker_healthy', { worker: 'vllm-0' }),
      undefined,
      'a departed worker leaves the per-worker gauges',
    );
    t.equal(metricValue(metrics, 'kvgate_worker_healthy', { worker: 'vllm-1' }), 1);
    t.ok(
      g.gateway.lines.some((l) => l.msg === 'fleet changed' && JSON.stringify(l.removed) === '["vllm-0"]'),
      'the change is logged',
    );
  },
);
