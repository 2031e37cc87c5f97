import t from 'tap';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { parseConfig } from '../../config/load.js';
import { discoveryConfigSchema } from '../../gateway/fleet/discovery/discovery.js';
import { inferencePoolErrors } from '../fixtures/inference-pool.js';
import { Registry } from 'prom-client';
import { Planner } from '../../gateway/disagg/planner.js';
import { plannerConfigSchema } from '../../gateway/disagg/config.js';
import { ANNOTATIONS, workersFromSlices, type EndpointSlice } from '../../gateway/fleet/discovery/endpoint-slices.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const K8S = join(ROOT, 'docker/k8s');

// Manifests are untyped YAML; the assertions are the type checks.
type Obj = Record<string, any>;

/** Every document of every manifest, parsed strictly (duplicate keys and YAML errors fail). */
function load(file: string): Obj[] {
  const docs = parseAllDocuments(readFileSync(join(K8S, file), 'utf8'), { uniqueKeys: true });
  return (Array.isArray(docs) ? docs : [docs])
    .map((d) => {
      if (d.errors.length > 0) throw new Error(`${file}: ${d.errors[0]!.message}`);
      return d.toJS() as Obj;
    })
    .filter((d) => d !== null);
}

const API_VERSIONS: Record<string, string> = {
  Namespace: 'v1',
  ServiceAccount: 'v1',
  ConfigMap: 'v1',
  Service: 'v1',
  Secret: 'v1',
  Deployment: 'apps/v1',
  Role: 'rbac.authorization.k8s.io/v1',
  RoleBinding: 'rbac.authorization.k8s.io/v1',
  InferencePool: 'inference.networking.k8s.io/v1',
  ScaledObject: 'keda.sh/v1alpha1',
};

const files = readdirSync(K8S)
  .filter((f) => f.endsWith('.yaml'))
  .sort();
const all = new Map(files.map((f) => [f, load(f)]));
const find = (file: string, kind: string, name?: string): Obj => {
  const o = all.get(file)!.find((d) => d.kind === kind && (name === undefined || d.metadata?.name === name));
  if (!o) throw new Error(`${file}: no ${kind} ${name ?? ''}`);
  return o;
};

/** A ConfigMap's kvgate.yaml, validated by the gateway's own loader. */
function gatewayConfig(cm: Obj, source: string) {
  const text = cm.data['kvgate.yaml'] as string;
  return { text, config: parseConfig(parseYaml(text, { uniqueKeys: true }), source, {}) };
}

/** The `# discovery:` block commented out in a config, uncommented and validated against the discovery schema. */
function commentedDiscovery(text: string): unknown {
  const lines = text.split('\n');
  const start = lines.findIndex((l) => /^\s*# discovery:\s*$/.test(l));
  if (start === -1) return undefined;
  const block: string[] = [];
  for (const l of lines.slice(start + 1)) {
    const m = l.match(/^\s*# {3}(.*)$/);
    if (!m) break;
    block.push(m[1]!);
  }
  return discoveryConfigSchema.parse(parseYaml(block.join('\n')));
}

/** Pod-spec containers (init containers included: the sidecar is one), with the name of the file. */
function podContainers(d: Obj): Obj[] {
  const spec = d.spec.template.spec;
  return [...(spec.initContainers ?? []), ...spec.containers];
}

function portNumber(container: Obj, port: number | string): number {
  if (typeof port === 'number') return port;
  const p = (container.ports ?? []).find((x: Obj) => x.name === port);
  if (!p) throw new Error(`container ${container.name} has no port named ${port}`);
  return p.containerPort;
}

t.test('every manifest parses; kinds, apiVersions, names and namespaces are set', async (t) => {
  t.same(files, [
    'epp.yaml',
    'gateway.yaml',
    'namespace.yaml',
    'nats.yaml',
    'sidecar.yaml',
    'vllm-disagg.yaml',
    'vllm.yaml',
  ]);
  for (const [file, docs] of all) {
    t.ok(docs.length > 0, `${file} has documents`);
    for (const d of docs) {
      const what = `${file}: ${d.kind} ${d.metadata?.name}`;
      t.equal(d.apiVersion, API_VERSIONS[d.kind], `${what}: apiVersion`);
      t.match(d.metadata?.name, /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, `${what}: a DNS-1123 name`);
      if (d.kind !== 'Namespace') t.equal(d.metadata.namespace, 'inference', `${what}: namespace`);
      if (d.kind === 'Deployment') {
        const sel = d.spec.selector.matchLabels;
        for (const [k, v] of Object.entries(sel))
          t.equal(d.spec.template.metadata.labels[k], v, `${what}: the selector matches the Pod labels (${k})`);
        for (const c of podContainers(d)) {
          t.ok(c.name && c.image, `${what}: container ${c.name} has a name and an image`);
          t.ok(
            c.resources?.requests?.cpu && c.resources?.requests?.memory,
            `${what}: container ${c.name} requests CPU and memory`,
          );
        }
      }
      if (d.kind === 'Service') {
        for (const p of d.spec.ports) t.ok(p.name && p.port, `${what}: named ports`);
      }
    }
  }
});

t.test('gateway.yaml: the ConfigMap is a valid kvgate config; the discovery block is valid too', async (t) => {
  const { text, config } = gatewayConfig(find('gateway.yaml', 'ConfigMap', 'kvgate-config'), 'gateway.yaml ConfigMap');
  t.equal(config.server.host, '0.0.0.0', 'reachable from the Service');
  t.equal(config.server.port, 8080);
  t.equal(config.routing.strategy, 'kv');
  const w = config.fleet.workers[0]!;
  t.match(w.url, /^http:\/\/vllm\.inference\.svc\.cluster\.local:8000$/, 'the static worker is the vLLM Service');
  const discovery = commentedDiscovery(text) as Obj;
  t.ok(discovery, 'a commented discovery block is present');
  t.equal(discovery.type, 'kubernetes');
  t.equal(discovery.service, 'vllm');
  t.same(discovery.kvEvents, { port: 5557, replayPort: 5558, topic: 'kv-events' });
  const sc = find('sidecar.yaml', 'ConfigMap');
  const side = gatewayConfig(sc, 'sidecar.yaml ConfigMap');
  t.equal((commentedDiscovery(side.text) as Obj).type, 'kubernetes');
});

t.test("probes, ports and Prometheus annotations point at the gateway's listener", async (t) => {
  const cases: [string, string][] = [
    ['gateway.yaml', 'kvgate-config'],
    ['sidecar.yaml', 'chat-app-kvgate'],
  ];
  for (const [file, cmName] of cases) {
    const port = gatewayConfig(find(file, 'ConfigMap', cmName), file).config.server.port;
    const dep = find(file, 'Deployment');
    const gw = podContainers(dep).find((c) => c.image.startsWith('kvgate'))!;
    t.ok(gw, `${file}: a kvgate container`);
    t.same(gw.args, ['serve', '--config', '/etc/kvgate/kvgate.yaml'], `${file}: the image's command, spelled out`);
    t.equal(gw.livenessProbe.httpGet.path, '/health', `${file}: liveness on /health`);
    t.equal(gw.readinessProbe.httpGet.path, '/ready', `${file}: readiness on /ready`);
    t.equal(portNumber(gw, gw.livenessProbe.httpGet.port), port, `${file}: liveness on the configured port`);
    t.equal(portNumber(gw, gw.readinessProbe.httpGet.port), port, `${file}: readiness on the configured port`);
    const ann = dep.spec.template.metadata.annotations;
    t.equal(ann['prometheus.io/scrape'], 'true');
    t.equal(Number(ann['prometheus.io/port']), port, `${file}: scrape the gateway port`);
    t.equal(ann['prometheus.io/path'], '/metrics');
    const mount = gw.volumeMounts.find((m: Obj) => m.mountPath === '/etc/kvgate');
    const vol = dep.spec.template.spec.volumes.find((v: Obj) => v.name === mount.name);
    t.equal(vol.configMap.name, cmName, `${file}: the config comes from the ConfigMap`);
    const sc = gw.securityContext;
    t.equal(sc.readOnlyRootFilesystem, true, `${file}: read-only root filesystem`);
    t.equal(sc.allowPrivilegeEscalation, false);
    t.same(sc.capabilities.drop, ['ALL']);
    t.equal(dep.spec.template.spec.securityContext.runAsNonRoot, true, `${file}: non-root`);
    t.ok(gw.resources.limits.memory, `${file}: a memory limit`);
  }
  const svc = find('gateway.yaml', 'Service', 'kvgate');
  const dep = find('gateway.yaml', 'Deployment', 'kvgate');
  for (const [k, v] of Object.entries(svc.spec.selector))
    t.equal(dep.spec.template.metadata.labels[k], v, 'the Service selects the gateway Pods');
  t.equal(dep.spec.template.spec.serviceAccountName, 'kvgate');
});

t.test('RBAC: the gateway may get, list and watch EndpointSlices and Pods, nothing else', async (t) => {
  const role = find('gateway.yaml', 'Role', 'kvgate-discovery');
  t.same(role.rules, [
    { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['get', 'list', 'watch'] },
    { apiGroups: [''], resources: ['pods'], verbs: ['get', 'list', 'watch'] },
  ]);
  for (const [file, sa] of [
    ['gateway.yaml', 'kvgate'],
    ['sidecar.yaml', 'chat-app'],
  ] as const) {
    const binding = all.get(file)!.find((d) => d.kind === 'RoleBinding')!;
    t.same(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'kvgate-discovery' });
    t.same(binding.subjects, [{ kind: 'ServiceAccount', name: sa, namespace: 'inference' }]);
    t.ok(
      all.get(file)!.some((d) => d.kind === 'ServiceAccount' && d.metadata.name === sa),
      `${file}: the ServiceAccount exists`,
    );
  }
});

t.test('vllm.yaml: KV events enabled, and the labels, annotations and ports discovery reads', async (t) => {
  const dep = find('vllm.yaml', 'Deployment', 'vllm');
  const svc = find('vllm.yaml', 'Service', 'vllm');
  const pod = dep.spec.template;
  t.equal(pod.metadata.labels['app.kubernetes.io/name'], 'vllm');
  t.ok(pod.metadata.labels['kvgate.io/pool']);
  t.equal(svc.spec.clusterIP, 'None', 'headless: one endpoint per Pod');
  for (const [k, v] of Object.entries(svc.spec.selector))
    t.equal(pod.metadata.labels[k], v, 'the Service selects the vLLM Pods');
  const c = pod.spec.containers[0];
  const arg = (c.args as string[]).find((a) => a.startsWith('--kv-events-config='))!;
  const kv = JSON.parse(arg.slice('--kv-events-config='.length));
  t.same(kv, {
    enable_kv_cache_events: true,
    publisher: 'zmq',
    endpoint: 'tcp://*:5557',
    replay_endpoint: 'tcp://*:5558',
    topic: 'kv-events',
  });
  const ann = pod.metadata.annotations;
  t.equal(ann[ANNOTATIONS.role], 'both');
  t.equal(ann[ANNOTATIONS.kvEventsPort], '5557');
  t.equal(ann[ANNOTATIONS.kvReplayPort], '5558');
  t.equal(ann[ANNOTATIONS.kvEventsTopic], kv.topic);
  t.equal(portNumber(c, 'kv-events'), 5557);
  t.equal(portNumber(c, 'kv-replay'), 5558);
  t.same(
    svc.spec.ports.map((p: Obj) => p.name),
    ['http', 'kv-events', 'kv-replay'],
  );
  t.equal(c.readinessProbe.httpGet.path, '/health', 'vLLM readiness gates its endpoint');
  t.equal(c.resources.limits['nvidia.com/gpu'], 1);
  t.ok((c.args as string[]).includes('--block-size=16'));
  const gw = gatewayConfig(find('gateway.yaml', 'ConfigMap'), 'gateway').config;
  t.equal(gw.models['Qwen/Qwen3-8B']?.blockSize, 16, "the gateway's block size is vLLM's");
  t.equal(ann[ANNOTATIONS.models], 'Qwen/Qwen3-8B');
  t.equal(
    gw.fleet.workers[0]!.kvEvents?.type === 'zmq' && gw.fleet.workers[0]!.kvEvents.topic,
    kv.topic,
    "the gateway subscribes to vLLM's topic",
  );
});

t.test('compose: the simulated fleet and its config agree; the commented vLLM variant is valid', async (t) => {
  const compose = parseYaml(readFileSync(join(ROOT, 'docker/compose.yaml'), 'utf8'), { uniqueKeys: true }) as Obj;
  const sim = compose.services.sim;
  const gw = compose.services.gateway;
  t.equal(sim.image, gw.image, 'one image for both');
  t.equal(sim.build.dockerfile, 'docker/Dockerfile');
  t.ok(
    existsSync(join(ROOT, 'docker', sim.build.context, sim.build.dockerfile)),
    'the build context is the repository root',
  );
  const flag = (name: string) => sim.command[sim.command.indexOf(name) + 1] as string;
  t.equal(sim.command[0], 'sim');
  t.equal(flag('--host'), '0.0.0.0', 'reachable from the gateway container');
  const mount = (gw.volumes as string[]).find((v) => v.endsWith(':/etc/kvgate/kvgate.yaml:ro'))!;
  const file = join(ROOT, 'docker', mount.split(':')[0]!);
  const config = parseConfig(parseYaml(readFileSync(file, 'utf8')), file, {});
  const n = Number(flag('--workers'));
  t.equal(config.fleet.workers.length, n, 'one configured worker per simulated worker');
  const base = Number(flag('--base-port'));
  const pub = Number(flag('--kv-events').split(':').pop());
  const replay = Number(flag('--kv-events-replay').split(':').pop());
  config.fleet.workers.forEach((w, i) => {
    t.equal(w.url, `http://sim:${base + i}`);
    t.same(w.kvEvents?.type === 'zmq' && [w.kvEvents.endpoint, w.kvEvents.replayEndpoint], [
      `tcp://sim:${pub + i}`,
      `tcp://sim:${replay + i}`,
    ]);
  });
  t.match(
    sim.healthcheck.test.join(' '),
    new RegExp(`127\\.0\\.0\\.1:${base}/health`),
    'the sim healthcheck probes worker 0',
  );
  t.equal(gw.depends_on.sim.condition, 'service_healthy');

  // The vLLM variant: everything after "# services:", uncommented.
  const text = readFileSync(join(ROOT, 'docker/compose.yaml'), 'utf8').split('\n');
  const start = text.findIndex((l) => l === '# services:');
  t.ok(start > 0, 'a commented services block');
  const variant = parseYaml(
    text
      .slice(start)
      .map((l) => l.replace(/^# ?/, ''))
      .join('\n'),
    { merge: true },
  ) as Obj;
  const v0 = variant.services['vllm-0'];
  t.equal(v0.image.split(':')[0], 'vllm/vllm-openai');
  const kv = JSON.parse(
    (v0.command as string[])
      .find((a) => a.startsWith('--kv-events-config='))!
      .split('=')
      .slice(1)
      .join('='),
  );
  t.equal(kv.endpoint, 'tcp://*:5557');
  t.equal(kv.replay_endpoint, 'tcp://*:5558');
  t.equal(kv.enable_kv_cache_events, true);
  t.same(v0.deploy.resources.reservations.devices[0].capabilities, ['gpu'], 'a GPU reservation');
  t.equal(variant.services['vllm-1'].image, v0.image, 'vllm-1 extends vllm-0');
  const vmount = (variant.services.gateway.volumes as string[])[0]!.split(':')[0]!;
  const vconfig = parseConfig(parseYaml(readFileSync(join(ROOT, 'docker', vmount), 'utf8')), vmount, {});
  t.same(
    vconfig.fleet.workers.map((w) => w.url),
    ['http://vllm-0:8000', 'http://vllm-1:8000'],
  );
  t.same(
    vconfig.fleet.workers.map((w) => w.kvEvents?.type === 'zmq' && w.kvEvents.endpoint),
    ['tcp://vllm-0:5557', 'tcp://vllm-1:5557'],
  );
});

t.test(
  "the commented discovery block, applied to vllm.yaml's Pods, yields the workers the static list describes",
  async (t) => {
    const { text } = gatewayConfig(find('gateway.yaml', 'ConfigMap', 'kvgate-config'), 'gateway');
    const d = commentedDiscovery(text) as Obj;
    const dep = find('vllm.yaml', 'Deployment', 'vllm');
    const svc = find('vllm.yaml', 'Service', 'vllm');
    // The EndpointSlice the controller would write for two ready replicas of vllm.yaml.
    const slice: EndpointSlice = {
      metadata: {
        name: 'vllm-x7k2p',
        labels: { 'kubernetes.io/service-name': svc.metadata.name, ...svc.metadata.labels },
      },
      addressType: 'IPv4',
      ports: svc.spec.ports.map((p: Obj) => ({
        name: p.name,
        port: portNumber(dep.spec.template.spec.containers[0], p.targetPort),
        protocol: 'TCP',
      })),
      endpoints: ['10.2.0.5', '10.2.0.6'].map((ip, i) => ({
        addresses: [ip],
        conditions: { ready: true },
        targetRef: { kind: 'Pod', name: `vllm-6d9f-${i}` },
      })),
    };
    const pods = new Map(
      [0, 1].map((i) => [`vllm-6d9f-${i}`, { name: `vllm-6d9f-${i}`, ...dep.spec.template.metadata }]),
    );
    const { workers, problems } = workersFromSlices([slice], pods, d as Parameters<typeof workersFromSlices>[2]);
    t.same(problems, []);
    t.same(
      workers.map((w) => [w.id, w.url, w.role, w.models, w.kvEvents]),
      [0, 1].map((i) => [
        `vllm-6d9f-${i}`,
        `http://10.2.0.${5 + i}:8000`,
        'both',
        ['Qwen/Qwen3-8B'],
        { endpoint: `tcp://10.2.0.${5 + i}:5557`, replayEndpoint: `tcp://10.2.0.${5 + i}:5558`, topic: 'kv-events' },
      ]),
    );
    t.equal(workers[0]!.labels['kvgate.io/pool'], 'qwen3-8b', 'Pod labels become worker labels (for pools)');
  },
);

t.test('epp.yaml: the InferencePool is valid v1 and points at the kvgate EPP', async (t) => {
  const pool = find('epp.yaml', 'InferencePool');
  t.same(inferencePoolErrors(pool), [], 'valid against the v1 fields');
  t.same(
    inferencePoolErrors({
      spec: {
        selector: { matchLabels: {} },
        targetPorts: [],
        endpointPickerRef: { name: 'x', failureMode: 'Maybe', extra: 1 },
      },
    }),
    [
      'spec.selector.matchLabels: 1 to 64 labels',
      'spec.targetPorts: 1 to 8 entries',
      'spec.endpointPickerRef.extra: unknown field',
      'spec.endpointPickerRef.port: required when kind is Service',
      'spec.endpointPickerRef.failureMode: FailOpen or FailClose',
    ],
    'the check itself catches mistakes',
  );
  // The picker Service exists, on the gRPC port the pool names, served by the epp Deployment.
  const svc = find('epp.yaml', 'Service', pool.spec.endpointPickerRef.name);
  const grpcPort = svc.spec.ports.find((p: Obj) => p.port === pool.spec.endpointPickerRef.port.number);
  t.ok(grpcPort, "the Service has the pool's EPP port");
  const dep = find('epp.yaml', 'Deployment', 'kvgate-epp');
  const c = dep.spec.template.spec.containers[0];
  t.equal(c.args[0], 'epp');
  t.equal(
    portNumber(c, grpcPort.targetPort),
    Number(c.args[c.args.indexOf('--grpc-port') + 1]),
    'targetPort is the gRPC port',
  );
  t.equal(c.livenessProbe.grpc.port, 9002);
  for (const [k, v] of Object.entries(svc.spec.selector))
    t.equal(dep.spec.template.metadata.labels[k], v, 'the Service selects the EPP Pods');
  // The pool selects the vLLM Pods, on their HTTP port, as the EPP's discovery does.
  const vllm = find('vllm.yaml', 'Deployment', 'vllm');
  for (const [k, v] of Object.entries(pool.spec.selector.matchLabels))
    t.equal(vllm.spec.template.metadata.labels[k], v, `the pool selects the vLLM Pods (${k})`);
  const engine = vllm.spec.template.spec.containers[0];
  t.equal(pool.spec.targetPorts[0].number, portNumber(engine, 'http'), "the target port is vLLM's HTTP port");
  const { config } = gatewayConfig(find('epp.yaml', 'ConfigMap', 'kvgate-epp-config'), 'epp.yaml ConfigMap');
  const d = config.fleet.discovery as Obj;
  t.equal(d.type, 'kubernetes');
  t.same(d.targetPorts, pool.spec.targetPorts, "discovery takes the pool's targetPorts list");
  t.equal(d.port, undefined);
  t.equal(
    d.labelSelector,
    Object.entries(pool.spec.selector.matchLabels)
      .map(([k, v]) => `${k}=${String(v)}`)
      .join(','),
  );
  // RBAC: read-only, and bound to the EPP's ServiceAccount.
  const role = find('epp.yaml', 'Role', 'kvgate-epp');
  for (const r of role.rules) t.same(r.verbs, ['get', 'list', 'watch'], `read-only on ${r.resources}`);
  const binding = find('epp.yaml', 'RoleBinding', 'kvgate-epp');
  t.equal(binding.subjects[0].name, dep.spec.template.spec.serviceAccountName);
});

t.test('vllm-disagg.yaml: KEDA scales each role from the metric the planner exports, without flapping', async (t) => {
  // The metric names the gateway really registers.
  const registry = new Registry();
  new Planner(
    plannerConfigSchema.parse({}),
    () => 0,
    () => ({ prefill: 0, decode: 0, both: 0 }),
  ).register(registry);
  const exported = new Set(registry.getMetricsAsArray().map((m) => m.name));
  const docs = all.get('vllm-disagg.yaml')!;
  const deployments = new Map(docs.filter((d) => d.kind === 'Deployment').map((d) => [d.metadata.name, d]));
  const scaled = docs.filter((d) => d.kind === 'ScaledObject');
  t.same(
    scaled.map((s) => s.metadata.name),
    ['vllm-prefill', 'vllm-decode'],
  );
  for (const role of ['prefill', 'decode']) {
    const so = scaled.find((s) => s.metadata.name === `vllm-${role}`)!;
    const ref = so.spec.scaleTargetRef;
    t.same([ref.apiVersion, ref.kind], ['apps/v1', 'Deployment']);
    const dep = deployments.get(ref.name);
    if (!dep) {
      t.fail(`${role}: the target Deployment ${ref.name} exists in the manifests`);
      continue;
    }
    const pod = dep.spec.template;
    t.equal(pod.metadata.annotations[ANNOTATIONS.role], role, `${role}: its Pods announce the role to discovery`);
    t.ok(pod.metadata.labels['kvgate.io/pool'], `${role}: a pool label`);
    t.ok(so.spec.minReplicaCount >= 1, `${role}: never scaled to zero`);
    t.ok(so.spec.maxReplicaCount > so.spec.minReplicaCount);
    t.ok(so.spec.cooldownPeriod > 0);
    const behavior = so.spec.advanced.horizontalPodAutoscalerConfig.behavior;
    t.ok(behavior.scaleUp.stabilizationWindowSeconds >= 60, `${role}: scale-up stabilisation window`);
    t.ok(
      behavior.scaleDown.stabilizationWindowSeconds >= behavior.scaleUp.stabilizationWindowSeconds,
      `${role}: scale down more slowly than up`,
    );
    t.equal(so.spec.triggers.length, 1);
    const trig = so.spec.triggers[0];
    t.equal(trig.type, 'prometheus');
    t.match(trig.metadata.serverAddress, /^https?:\/\//);
    const metric = `kvgate_recommended_${role}_workers`;
    t.ok(exported.has(metric), `${metric} is exported by the planner`);
    const names = [...(trig.metadata.query as string).matchAll(/kvgate_[a-z_]+/g)].map((m) => m[0]);
    t.same(names, [metric], `${role}: the query reads ${metric}`);
    // AverageValue with threshold 1: desired replicas = ceil(advice / 1) = the advice.
    t.equal(trig.metadata.metricType, 'AverageValue');
    t.equal(trig.metadata.threshold, '1');
  }
  const [p, d] = ['prefill', 'decode'].map((r) => deployments.get(`vllm-${r}`) ?? {});
  t.same(
    p!.spec?.template.metadata.labels['kvgate.io/pool'],
    d!.spec?.template.metadata.labels['kvgate.io/pool'],
    'both roles in one pool',
  );
});

t.test('load sharing: NATS is started wherever the config turns loadSharing on', async (t) => {
  // Kubernetes: the gateway's config points at nats.yaml's Service.
  const { config } = gatewayConfig(find('gateway.yaml', 'ConfigMap', 'kvgate-config'), 'gateway.yaml');
  const url = new URL(config.loadSharing!.nats.servers[0]!);
  const svc = find('nats.yaml', 'Service', 'nats');
  const dep = find('nats.yaml', 'Deployment', 'nats');
  t.equal(url.hostname, `${svc.metadata.name}.${svc.metadata.namespace}.svc.cluster.local`);
  t.equal(Number(url.port), svc.spec.ports[0].port, 'the Service port the config names');
  const nats = podContainers(dep)[0]!;
  t.equal(portNumber(nats, svc.spec.ports[0].targetPort), 4222);
  t.ok(nats.args.includes('4222'), 'nats-server listens on the client port');
  for (const [k, v] of Object.entries(svc.spec.selector))
    t.equal(dep.spec.template.metadata.labels[k], v, 'the Service selects the NATS Pod');

  // Compose: the `replicas` profile runs NATS and every gateway mounting a loadSharing config.
  const compose = parseYaml(readFileSync(join(ROOT, 'docker/compose.yaml'), 'utf8'), { uniqueKeys: true }) as Obj;
  const sharing = Object.entries(compose.services as Record<string, Obj>).filter(([, s]) =>
    (s.volumes as string[] | undefined)?.some((v) => v.includes('compose-replicas')),
  );
  t.equal(sharing.length, 2, 'two load-sharing gateway replicas');
  const file = join(ROOT, 'docker/kvgate.compose-replicas.yaml');
  const cfg = parseConfig(parseYaml(readFileSync(file, 'utf8')), file, {});
  const host = new URL(cfg.loadSharing!.nats.servers[0]!).hostname;
  t.ok(compose.services[host], `the NATS server (${host}) is a compose service`);
  for (const [name, s] of sharing) {
    t.same(s.profiles, compose.services[host].profiles, `${name} runs in the same profile as NATS`);
    t.ok(s.depends_on[host], `${name} starts after NATS`);
  }
});
