import t from 'tap';
import { request } from 'undici';
import { eventually, MODEL, startSim, writeConfig } from '../../fixtures/gateway.js';
import { QWEN3_TOKENIZER_DIR } from '../../fixtures/processes.js';
import { FakeKubeApi, slice } from '../../fixtures/fake-kube-api.js';
import { startEpp } from '../../fixtures/epp.js';

/**
 * An InferencePool with two `targetPorts`: the pool's one Pod (127.0.0.1 behind the
 * fake Kubernetes API) serves a data-parallel rank on each port (two simulated
 * engines), and `kvgate epp` answers each as its own `ip:port` endpoint. Started
 * with `--proxy`, its HTTP port also serves the OpenAI routes over the same workers.
 */
const NS = 'inference';
const TOKEN = 'target-ports-token-0123';

void t.test('one endpoint per pod IP and target port, each answered as its own ip:port', async (t) => {
  const teardown = t.teardown.bind(t);
  const api = new FakeKubeApi(NS, TOKEN);
  const apiPort = await api.listen();
  teardown(() => api.close());
  const { workers } = await startSim(teardown, 2, ['--speedup', '20']);
  const ports = workers.map((w) => Number(new URL(w.url).port));
  api.pods.set('vllm-0', { name: 'vllm-0', uid: 'uid-vllm-0', labels: { 'kvgate.io/pool': 'qwen' } });
  // The Service's slice names its own port; the pool's target ports are what count.
  api.setQuietly(
    slice('qwen-abc12', [['vllm-0', '127.0.0.1', true]], {
      metadata: { name: 'qwen-abc12', labels: { 'kvgate.io/pool': 'qwen' } },
    }),
  );
  const kubeconfig = writeConfig(
    teardown,
    `apiVersion: v1
kind: Config
current-context: test
contexts: [{ name: test, context: { cluster: fake, user: epp, namespace: ${NS} } }]
clusters: [{ name: fake, cluster: { server: "http://127.0.0.1:${apiPort}" } }]
users: [{ name: epp, user: { token: ${TOKEN} } }]
`,
    'kubeconfig',
  );
  const config = {
    server: { host: '127.0.0.1' },
    fleet: {
      health: { intervalMs: 200, timeoutMs: 2000 },
      discovery: {
        type: 'kubernetes',
        labelSelector: 'kvgate.io/pool=qwen',
        targetPorts: ports.map((number) => ({ number })),
        kubeconfig,
        models: [MODEL],
        backoff: { initialMs: 20, maxMs: 200 },
      },
    },
    models: { [MODEL]: { tokenizer: { type: 'local', dir: QWEN3_TOKENIZER_DIR }, blockSize: workers[0]!.blockSize } },
    routing: { strategy: 'least-load' },
  };
  const { envoy, url } = await startEpp(teardown, config, { args: ['--proxy'] });
  await eventually(async () => {
    const r = (await (await request(`${url}/ready`)).body.json()) as { healthyWorkers: number };
    return r.healthyWorkers === 2 || undefined;
  }, 20_000);

  const endpoints = ports.map((p) => `127.0.0.1:${p}`);
  const body = (content: string) =>
    Buffer.from(JSON.stringify({ model: MODEL, messages: [{ role: 'user', content }], max_tokens: 2 }));
  for (const [i, ep] of endpoints.entries()) {
    const r = await envoy.process({ path: '/v1/chat/completions', chunks: [body(`rank ${i}`)], subset: [ep] });
    t.equal(r.header, ep, `the hint ${ep} picks that rank`);
    t.equal(r.setHeaders['x-kvgate-worker'], `vllm-0-${ports[i]}`, 'a worker per pod and port');
  }
  const open = await envoy.process({ path: '/v1/chat/completions', chunks: [body('either')] });
  t.same(open.header!.split(',').sort(), [...endpoints].sort(), 'both ranks offered: the pick and its fallback');

  const served = await request(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: body('through the proxy routes'),
  });
  t.equal(served.statusCode, 200, '--proxy: the HTTP port also serves inference');
  t.ok(ports.map((p) => `vllm-0-${p}`).includes(String(served.headers['x-kvgate-worker'])), 'on one of the ranks');
  await served.body.dump();
});
