import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DiscoveredWorker } from '../../../../gateway/fleet/discovery/discovery.js';
import { KubeConfigError } from '../../../../gateway/fleet/discovery/kube-api.js';
import {
  KubernetesDiscovery,
  kubernetesDiscoveryConfigSchema,
} from '../../../../gateway/fleet/discovery/kubernetes.js';
import { FakeKubeApi, slice } from '../../../fixtures/fake-kube-api.js';

const NS = 'inference';
const TOKEN = 'test-token-0123456789';

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'kvgate-kube-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function kubeconfig(dir: string, server: string, token: string): string {
  const file = join(dir, 'kubeconfig');
  writeFileSync(
    file,
    `apiVersion: v1
kind: Config
current-context: test
contexts:
  - name: test
    context: { cluster: fake, user: gateway, namespace: ${NS} }
clusters:
  - name: fake
    cluster: { server: "${server}" }
users:
  - name: gateway
    user: { token: ${token} }
`,
  );
  return file;
}

/** Emissions in order, and a way to wait for the next one that satisfies a test. */
function recorder() {
  const seen: DiscoveredWorker[][] = [];
  const waiters: { test: (w: DiscoveredWorker[]) => boolean; resolve: (w: DiscoveredWorker[]) => void }[] = [];
  return {
    seen,
    onChange(w: DiscoveredWorker[]) {
      seen.push(w);
      for (const x of [...waiters])
        if (x.test(w)) {
          waiters.splice(waiters.indexOf(x), 1);
          x.resolve(w);
        }
    },
    until(test: (ids: string[]) => boolean, what: string): Promise<DiscoveredWorker[]> {
      const last = seen[seen.length - 1];
      if (last && test(last.map((w) => w.id).sort())) return Promise.resolve(last);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () =>
            reject(
              new Error(
                `timed out waiting for: ${what}; last seen ${JSON.stringify(seen[seen.length - 1]?.map((w) => w.id))}`,
              ),
            ),
          10_000,
        );
        waiters.push({
          test: (w) => test(w.map((x) => x.id).sort()),
          resolve: (w) => {
            clearTimeout(timer);
            resolve(w);
          },
        });
      });
    },
  };
}
const ids =
  (...want: string[]) =>
  (got: string[]) =>
    JSON.stringify(got) === JSON.stringify(want.sort());

const config = (extra: Record<string, unknown>) =>
  kubernetesDiscoveryConfigSchema.parse({
    type: 'kubernetes',
    service: 'vllm',
    models: ['Qwen/Qwen3-8B'],
    kvEvents: { port: 5557 },
    backoff: { initialMs: 20, maxMs: 200 },
    ...extra,
  });

t.test('list, then watch: adds, readiness flips, deletes, 410 Gone re-lists, dropped watches resume', async (t) => {
  const api = new FakeKubeApi(NS, TOKEN);
  const port = await api.listen();
  t.teardown(() => api.close());
  api.pods.set('vllm-0', {
    name: 'vllm-0',
    uid: 'uid-vllm-0',
    labels: { 'app.kubernetes.io/name': 'vllm', 'kvgate.io/pool': 'qwen3' },
    annotations: {
      'kvgate.io/kv-events-port': '5557',
      'kvgate.io/kv-replay-port': '5558',
      'kvgate.io/role': 'both',
      'kvgate.io/models': 'Qwen/Qwen3-8B, qwen-lora',
    },
  });
  api.pods.set('vllm-1', { name: 'vllm-1', uid: 'uid-vllm-1', labels: { 'kvgate.io/role': 'prefill' } });
  api.pods.set('vllm-2', { name: 'vllm-2', uid: 'uid-vllm-2', annotations: { 'kvgate.io/role': 'decode' } });
  api.setQuietly(
    slice('vllm-a', [
      ['vllm-0', '10.1.0.10', true],
      ['vllm-1', '10.1.0.11', false],
    ]),
  );
  const listVersion = api.version;

  const d = new KubernetesDiscovery(config({ kubeconfig: kubeconfig(tempDir(t), `http://127.0.0.1:${port}`, TOKEN) }));
  const rec = recorder();
  t.teardown(() => d.stop());
  await d.start(rec.onChange);
  t.same(
    rec.seen,
    [
      [
        {
          id: 'vllm-0',
          url: 'http://10.1.0.10:8000',
          models: ['Qwen/Qwen3-8B', 'qwen-lora'],
          role: 'both',
          labels: { 'app.kubernetes.io/name': 'vllm', 'kvgate.io/pool': 'qwen3' },
          kvEvents: { endpoint: 'tcp://10.1.0.10:5557', replayEndpoint: 'tcp://10.1.0.10:5558' },
        },
      ],
    ],
    'the first list is emitted before start resolves; only ready endpoints; annotations read from the Pod',
  );
  t.match(
    api.requests[0],
    /^\/apis\/discovery\.k8s\.io\/v1\/namespaces\/inference\/endpointslices\?labelSelector=kubernetes\.io%2Fservice-name%3Dvllm$/,
    'namespace from the kubeconfig context; the Service selected by label',
  );
  await api.watching();
  t.match(
    api.requests.find((r) => r.includes('watch=1')),
    new RegExp(`resourceVersion=${listVersion}&allowWatchBookmarks=true&timeoutSeconds=290$`),
    "watch from the list's resourceVersion",
  );

  api.push(
    'MODIFIED',
    slice('vllm-a', [
      ['vllm-0', '10.1.0.10', true],
      ['vllm-1', '10.1.0.11', true],
    ]),
  );
  const two = await rec.until(ids('vllm-0', 'vllm-1'), 'vllm-1 turns ready');
  const w1 = two.find((w) => w.id === 'vllm-1')!;
  t.equal(w1.role, 'prefill', 'role from a Pod label');
  t.same(
    w1.kvEvents,
    { endpoint: 'tcp://10.1.0.11:5557' },
    'kv-events port from the config when the Pod has no annotation',
  );
  t.same(w1.models, ['Qwen/Qwen3-8B'], 'models from the config');

  api.push(
    'ADDED',
    slice('vllm-b', [['vllm-2', '10.1.0.12', true]], {
      ports: [
        { name: 'http', port: 8000 },
        { name: 'kv-events', port: 6557 },
      ],
    }),
  );
  const three = await rec.until(ids('vllm-0', 'vllm-1', 'vllm-2'), 'a second slice added');
  const w2 = three.find((w) => w.id === 'vllm-2')!;
  t.equal(w2.role, 'decode');
  t.equal(w2.kvEvents?.endpoint, 'tcp://10.1.0.12:6557', 'a Service port named kv-events beats the config');

  api.bookmark();
  api.push(
    'MODIFIED',
    slice('vllm-a', [
      ['vllm-0', '10.1.0.10', false],
      ['vllm-1', '10.1.0.11', true],
    ]),
  );
  await rec.until(ids('vllm-1', 'vllm-2'), 'vllm-0 turns unready');

  // The history is compacted while a slice disappears unseen: only a fresh list can notice.
  const lists = api.listCount;
  api.setQuietly({ delete: 'vllm-b' });
  api.expire();
  await rec.until(ids('vllm-1'), 're-list after 410 Gone drops vllm-2');
  t.equal(api.listCount, lists + 1, 'exactly one re-list');
  await api.watching();

  // The connection breaks mid-watch: the client reconnects (backoff) and resumes from the last version, without listing.
  api.dropWatches();
  await api.watching();
  api.push(
    'MODIFIED',
    slice('vllm-a', [
      ['vllm-0', '10.1.0.10', true],
      ['vllm-1', '10.1.0.11', true],
    ]),
  );
  await rec.until(ids('vllm-0', 'vllm-1'), 'events after a reconnect');
  t.equal(api.listCount, lists + 1, 'a dropped watch resumes without listing again');

  api.push('DELETED', slice('vllm-a', []));
  t.same(await rec.until(ids(), 'slice deleted'), [], 'no endpoints, no workers');

  const emitted = rec.seen.length;
  await d.stop();
  api.push('ADDED', slice('vllm-c', [['vllm-9', '10.1.0.19', true]]));
  await new Promise((r) => setTimeout(r, 100));
  t.equal(rec.seen.length, emitted, 'nothing is emitted after stop');
  const podGets = api.requests.filter((r) => r.includes('/pods/'));
  t.equal(podGets.length, 3, 'each Pod is read once');
});

t.test('an HTTP 410 on the watch request re-lists too', async (t) => {
  const api = new FakeKubeApi(NS, TOKEN);
  const port = await api.listen();
  t.teardown(() => api.close());
  api.setQuietly(slice('vllm-a', [['vllm-0', '10.1.0.10', true]]));
  api.oldestVersion = 1000; // every watch from the list's version is "too old" once
  const d = new KubernetesDiscovery(
    config({ kubeconfig: kubeconfig(tempDir(t), `http://127.0.0.1:${port}`, TOKEN), readPods: false }),
  );
  const rec = recorder();
  t.teardown(() => d.stop());
  await d.start(rec.onChange);
  while (api.listCount < 2) await new Promise((r) => setTimeout(r, 10));
  api.oldestVersion = 0;
  api.version = 2000;
  await api.watching();
  api.push(
    'MODIFIED',
    slice('vllm-a', [
      ['vllm-0', '10.1.0.10', true],
      ['vllm-1', '10.1.0.11', true],
    ]),
  );
  await rec.until(ids('vllm-0', 'vllm-1'), 'watching after re-list');
  t.equal(
    api.requests.some((r) => r.includes('/pods/')),
    false,
    'readPods: false reads no Pods',
  );
});

t.test('a wrong token is retried with backoff and start still resolves; bad credentials reject', async (t) => {
  const api = new FakeKubeApi(NS, TOKEN);
  const port = await api.listen();
  t.teardown(() => api.close());
  const dir = tempDir(t);
  const d = new KubernetesDiscovery(config({ kubeconfig: kubeconfig(dir, `http://127.0.0.1:${port}`, 'wrong-token') }));
  const rec = recorder();
  await d.start(rec.onChange);
  while (api.requests.length < 3) await new Promise((r) => setTimeout(r, 10));
  await d.stop();
  t.same(rec.seen, [], 'nothing emitted without a successful list');

  const missing = new KubernetesDiscovery(config({ kubeconfig: join(dir, 'nope') }));
  await t.rejects(
    missing.start(() => {}),
    KubeConfigError,
  );
  const execUser = join(dir, 'exec-kubeconfig');
  writeFileSync(
    execUser,
    readFileSync(kubeconfig(dir, 'http://127.0.0.1:1', 'x'), 'utf8').replace(
      'user: { token: x }',
      'user: { exec: { command: aws } }',
    ),
  );
  await t.rejects(
    new KubernetesDiscovery(config({ kubeconfig: execUser })).start(() => {}),
    /exec and auth-provider credentials are not supported/,
  );
});

const haveOpenssl = spawnSync('openssl', ['version']).status === 0;
t.test(
  'in-cluster: service-account token, CA and namespace from their files, over TLS',
  { skip: haveOpenssl ? false : 'openssl is not available to make a test certificate' },
  async (t) => {
    const dir = tempDir(t);
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-keyout',
        join(dir, 'key.pem'),
        '-out',
        join(dir, 'ca.crt'),
        '-days',
        '1',
        '-subj',
        '/CN=127.0.0.1',
        '-addext',
        'subjectAltName=IP:127.0.0.1',
      ],
      { stdio: 'ignore' },
    );
    const api = new FakeKubeApi('team-a', 'sa-token-abcdef', {
      key: readFileSync(join(dir, 'key.pem'), 'utf8'),
      cert: readFileSync(join(dir, 'ca.crt'), 'utf8'),
    });
    const port = await api.listen();
    t.teardown(() => api.close());
    writeFileSync(join(dir, 'token'), 'sa-token-abcdef\n');
    writeFileSync(join(dir, 'namespace'), 'team-a');
    api.setQuietly(slice('vllm-a', [['vllm-0', '10.1.0.10', true]]));
    const d = new KubernetesDiscovery(
      config({ readPods: false, labelSelector: 'app.kubernetes.io/name=vllm', service: undefined }),
      {
        env: {
          env: { KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: String(port) },
          serviceAccountDir: dir,
        },
      },
    );
    const rec = recorder();
    t.teardown(() => d.stop());
    await d.start(rec.onChange);
    t.same(
      rec.seen.map((l) => l.map((w) => w.id)),
      [['vllm-0']],
    );
    t.match(api.requests[0], /namespaces\/team-a\/endpointslices\?labelSelector=app\.kubernetes\.io%2Fname%3Dvllm$/);

    // Projected tokens rotate: the API server stops taking the old one, the next request must carry the new one.
    await api.watching();
    writeFileSync(join(dir, 'token'), 'rotated-token-123456\n');
    api.token = 'rotated-token-123456';
    api.dropWatches();
    await api.watching();
    api.push(
      'MODIFIED',
      slice('vllm-a', [
        ['vllm-0', '10.1.0.10', true],
        ['vllm-1', '10.1.0.11', true],
      ]),
    );
    await rec.until(ids('vllm-0', 'vllm-1'), 'events after the token rotated');
    t.pass('the rotated token file was re-read');
  },
);
