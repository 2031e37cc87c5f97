import { createServer, type Server } from 'node:http';
import type { Logger } from 'pino';
import type { GatewayConfig } from '../config/schema.js';
import { createAdminHandler } from './ops/admin.js';
import { Fleet } from './fleet/fleet.js';
import { Transport } from './proxy/forward.js';
import { HealthChecker, type HealthProbe } from './fleet/health.js';
import { GatewayMetrics } from './ops/metrics.js';
import { registerKvMetrics, registerTokenizeMetric } from './ops/kv-metrics.js';
import { Passthrough } from './proxy/passthrough.js';
import { createFrontHandler, opsOnly } from './front/server.js';
import { Admission } from './front/overload.js';
import { localTokenizers } from './front/routes/tokenize.js';
import { createToolSessions } from './fleet/tools/tool-sessions.js';
import { answerClientError, answerExpectation, frontServerOptions, requireHost } from './front/client-limits.js';
import { configureUpstreamAuth } from './proxy/upstream-auth.js';
import {
  createDiscovery,
  diffWorkers,
  type DiscoveredWorker,
  type DiscoveryDeps,
} from './fleet/discovery/discovery.js';
import { FleetSync, type FleetChange } from './fleet/fleet-sync.js';
import { dropWorkerSeries, FrontTracker, registerLifecycleMetrics, registerMemoryMetrics } from './ops/lifecycle.js';
import type { RoutingPipeline } from './routing/pipeline.js';
import { buildRouting, LivePipeline, poolSignature, restartOnlyChanges, type RoutingDeps } from './routing/reload.js';
import { Disaggregation } from './disagg/two-leg.js';
import { PdSplit } from './disagg/split.js';
import { createLoadSharing } from './fleet/load-sharing-nats.js';
import { buildKvServices } from './kv-services.js';
import { FleetAdapters } from './fleet/adapters.js';
import { createLoraAdmin } from './ops/lora-admin.js';
import { listen } from './ops/startup-error.js';
import { FlowControl } from './flow/flow.js';

export interface GatewayOptions {
  log: Logger;
  healthProbe?: HealthProbe;
  random?: () => number;
  now?: () => number;
  /** Registers prom-client's process metrics (off in tests that start many gateways). */
  defaultMetrics?: boolean;
  /** Tests: a stub DNS resolver or in-cluster Kubernetes paths for `fleet.discovery`. */
  discovery?: Pick<DiscoveryDeps, 'resolver' | 'kubeEnv' | 'random'>;
  /** `ops`: the HTTP port answers only /health, /ready and /metrics (the EPP mode, unless asked for the proxy too). */
  front?: 'proxy' | 'ops';
}

/** What a reload changed, for its log line. */
export interface ReloadSummary extends FleetChange {
  strategy: string;
  policies: number;
  experiments: number;
  /** Changed keys that only a restart applies (listen ports, models...). */
  needsRestart: string[];
}

export interface Gateway {
  /** `http://host:port` of the OpenAI-compatible front. */
  readonly url: string;
  readonly adminUrl: string;
  readonly fleet: Fleet;
  readonly metrics: GatewayMetrics;
  /** Which worker has which LoRA adapter loaded. */
  readonly adapters: FleetAdapters;
  /** The routing core (request -> policy -> strategy), for fronts other than the HTTP proxy (the EPP, gateway/epp/). */
  readonly pipeline: RoutingPipeline;
  /** Flow control, when `flow.enabled`; and the gateway-wide concurrency bound (`server.overload`). */
  readonly flow: FlowControl | undefined;
  readonly admission: Admission;
  /** KV block size of the models, for load accounting. */
  readonly blockSize: number;
  /** The config in force (the last one `reload` accepted). */
  readonly config: GatewayConfig;
  readonly draining: boolean;
  /** A discovery source's whole current list of workers, applied through the dynamic fleet. */
  setDiscovered(workers: readonly DiscoveredWorker[]): FleetChange;
  /**
   * Applies a new config: its workers (diff by id) and its routing (swapped for
   * new requests; in-flight ones keep theirs). Throws, with nothing applied, when
   * the routing cannot be built. Keys that need a restart are reported, not applied.
   */
  reload(config: GatewayConfig): ReloadSummary;
  /** Counts a reload attempt (`kvgate_config_reloads_total{result}`); a file that fails to load never reaches `reload`. */
  countReload(result: 'ok' | 'rejected'): void;
  /**
   * Stops taking requests and lets in-flight ones finish: `/ready` answers 503,
   * the front listener closes, responses carry `connection: close`; after
   * `timeoutMs` the rest are cut. Resolves with how many were cut.
   */
  drain(timeoutMs: number): Promise<{ cut: number }>;
  close(): Promise<void>;
}

/**
 * The composition root: builds every part from the config, in the order they
 * depend on each other (fleet, KV index, routing, proxy, servers), wires them
 * request -> policy -> strategy -> fleet/index -> proxy, then starts them:
 * health, KV event sources, listeners, `fleet.discovery`. Nothing is bound
 * late; a start-up that fails closes whatever it had started.
 */
export async function startGateway(initialConfig: GatewayConfig, options: GatewayOptions): Promise<Gateway> {
  const { log } = options;
  let config = initialConfig;
  const random = options.random ?? Math.random;
  const now = options.now ?? Date.now;

  // --- fleet, and the KV index fed by the workers' events ---
  const fleet = new Fleet(config.fleet.workers, {
    breaker: config.upstream.breaker,
    log,
    sharedLoad: config.loadSharing !== undefined,
  });
  configureUpstreamAuth(fleet.workers, config.fleet.workers);
  const metrics = new GatewayMetrics(fleet, { defaultMetrics: options.defaultMetrics });
  const transport = new Transport(fleet.workers, config.upstream);
  const adapters = new FleetAdapters({
    fleet,
    transport,
    log,
    config: config.lora,
    configured: new Map(Object.entries(config.models).flatMap(([base, m]) => m.loras.map((l) => [l, base] as const))),
  });
  const kv = await buildKvServices(config, {
    adapterParent: (name) => adapters.parentOf(name),
    log,
    workerUrlFor: (model) => fleet.candidates(model)[0]?.url,
    onTokenized: registerTokenizeMetric(metrics.registry),
  });
  registerKvMetrics(metrics.registry, kv);
  registerMemoryMetrics(metrics.registry, kv.tokenizers);
  // A worker that fails health checks keeps its index (kv-services explains why); its return triggers a replay probe.
  fleet.onStatus((worker, up) => kv.workerStatus(worker.id, up));
  const health = new HealthChecker(fleet, config.fleet.health, log, options.healthProbe);

  // --- routing: request -> policy -> strategy, over the fleet and the index ---
  const blockSize = Object.values(config.models)[0]?.blockSize ?? 16;
  const lenientPools = config.fleet.discovery !== undefined && config.fleet.discovery.type !== 'static';
  const pdSplit = new PdSplit(config.disaggregation, fleet);
  // Replicas share their in-flight load (and may order their decisions) over NATS; undefined without `loadSharing`.
  const sharing = createLoadSharing(config.loadSharing, { fleet, log, now, registry: metrics.registry });
  const routingDeps: RoutingDeps = {
    fleet,
    metrics,
    log,
    index: kv.matcher,
    promptBlocks: kv.promptBlocks,
    random,
    now,
    blockSize,
    adminToken: config.admin.token,
    split: pdSplit.split,
    adapters,
    decisionTurn: sharing && ((arrivedAt) => sharing.decisionTurn(arrivedAt)),
  };
  const first = buildRouting(config, routingDeps, fleet.workers, lenientPools);
  const pipeline = new LivePipeline(first.pipeline, routingDeps, first.strategy);
  let pending = first.pending;
  let pools = poolSignature(config.routing, fleet.workers);
  // Pools are resolved when routing is built: a fleet change that moves a worker in or out of one rebuilds it.
  const onFleetChanged = () => {
    const next = poolSignature(config.routing, fleet.workers);
    if (!pending && next === pools) return;
    try {
      const built = buildRouting(config, routingDeps, fleet.workers, lenientPools);
      pipeline.swap(built.pipeline, built.strategy);
      pending = built.pending;
      pools = next;
      log.info({ strategy: built.strategy, pending }, 'routing rebuilt for the new fleet');
    } catch (err) {
      log.warn({ error: (err as Error).message }, 'routing not rebuilt for the new fleet; the previous routing stays');
    }
  };
  const sync = new FleetSync(
    {
      fleet,
      transport,
      log,
      healthTimeoutMs: config.fleet.health.timeoutMs,
      healthProbe: options.healthProbe,
      drainTimeoutMs: config.server.drainTimeoutMs,
      hooks: { added: (w) => kv.addWorker(w), removed: (id) => kv.removeWorker(id) },
      onChanged: onFleetChanged,
      // Gauges are set at scrape time for current workers only: a departed worker's last values would linger.
      onForgotten: (id) => {
        if (!fleet.workers.some((w) => w.id === id)) dropWorkerSeries(metrics.registry, id);
      },
    },
    config.fleet.workers,
  );

  // --- proxy: pass-through, disaggregated two-leg serving, the load other replicas see ---
  const passthrough = new Passthrough(fleet, metrics, {
    passClientAuthorization: config.upstream.passClientAuthorization,
    routes: config.server.passthrough,
  });
  const disagg = new Disaggregation({
    config: config.disaggregation,
    fleet,
    transport,
    metrics,
    log,
    split: pdSplit,
    index: kv.matcher,
    blockSize,
    now,
    random,
  });

  // --- flow control (gateway/flow/): off unless `flow.enabled` ---
  const flow = config.flow.enabled
    ? new FlowControl({ config: config.flow, registry: metrics.registry, log, blockSize })
    : undefined;
  // One bound for every front (the proxy routes and the EPP) of this process.
  const admission = new Admission(config.server.overload, metrics.registry);

  // Tool-call retention (gateway/fleet/tools/): undefined unless `toolRetention.enabled`.
  const tools = createToolSessions(config.toolRetention, metrics.registry, log);

  // --- servers and discovery ---
  const front = new FrontTracker(
    createFrontHandler({
      config: config.server,
      fleet,
      pipeline,
      transport,
      passthrough,
      metrics,
      log,
      blockSize,
      disagg,
      flow,
      tokenizers: localTokenizers(kv.tokenizers, config.models),
      tools,
      admission,
    }),
  );
  const frontHandler = options.front === 'ops' ? opsOnly(front.handler) : front.handler;
  const frontServer = createServer(frontServerOptions(config.server), requireHost(frontHandler));
  frontServer.on('clientError', answerClientError).on('checkExpectation', answerExpectation);
  const admin = createServer(
    createAdminHandler({
      fleet,
      pipeline,
      token: config.admin.token,
      indexStats: () => kv.stats(),
      disagg,
      flow,
      tools,
      lora: createLoraAdmin({
        fleet,
        transport,
        adapters,
        config: config.lora,
        log,
        pools: () => config.routing.pools,
      }),
    }),
  );
  const lifecycle = registerLifecycleMetrics(metrics.registry, {
    fleet,
    draining: () => front.draining,
    drainingWorkers: () => sync.draining,
    discovered: () => sync.discoveredCount,
  });
  const spec = config.fleet.discovery;
  const discovery =
    spec !== undefined && spec.type !== 'static' ? createDiscovery(spec, { ...options.discovery, log }) : undefined;
  let discoveredBefore: readonly DiscoveredWorker[] = [];
  const setDiscovered = (workers: readonly DiscoveredWorker[]): FleetChange => {
    const d = diffWorkers(discoveredBefore, workers);
    discoveredBefore = workers;
    lifecycle.discoveryChange(d.added.length, d.removed.length, d.changed.length);
    return sync.setDiscovered(workers);
  };
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      await discovery?.stop();
      sync.close();
      adapters.close();
      flow?.close();
      await Promise.all([closeServer(frontServer), closeServer(admin)]);
      await health.stop();
      await sharing?.close();
      fleet.close();
      passthrough.close();
      await transport.close();
      await kv.stop();
    })());

  // --- start, in order: a gateway that says it is ready has its health view, its index feeds and its listeners ---
  let url: string;
  let adminUrl: string;
  try {
    sharing?.start();
    await health.start();
    // A worker that comes (back) up may have other adapters than we last saw.
    fleet.onStatus((worker, up) => {
      if (up) void adapters.refresh([worker]);
    });
    void adapters.refresh();
    adapters.start();
    await kv.start();
    url = await listen(frontServer, config.server.host, config.server.port, 'server');
    adminUrl = await listen(admin, config.admin.host, config.admin.port, 'admin');
    if (discovery) {
      await discovery.start(setDiscovered);
      log.info({ discovery: discovery.name, workers: fleet.workers.length }, 'discovery started');
    }
  } catch (err) {
    await close();
    throw err;
  }
  log.info(
    {
      url,
      adminUrl,
      strategy: first.strategy,
      workers: fleet.workers.length,
      healthy: fleet.healthy.length,
      loadSharing: sharing?.replicaId,
    },
    'gateway ready',
  );

  return {
    url,
    adminUrl,
    fleet,
    metrics,
    adapters,
    pipeline,
    flow,
    admission,
    blockSize,
    get config() {
      return config;
    },
    get draining() {
      return front.draining;
    },
    setDiscovered,
    reload(next) {
      const needsRestart = restartOnlyChanges(config, next);
      // Everything that can fail is tried before anything changes: the new routing over the fleet-to-be.
      const members = sync.prospective(next.fleet.workers);
      configureUpstreamAuth(
        members.map((w) => ({ id: w.id })),
        members,
      );
      const built = buildRouting(next, routingDeps, members, lenientPools);
      config = {
        ...next,
        server: config.server,
        admin: config.admin,
        upstream: config.upstream,
        models: config.models,
        disaggregation: config.disaggregation,
        loadSharing: config.loadSharing,
        lora: config.lora,
        flow: config.flow,
        fleet: { ...next.fleet, health: config.fleet.health, discovery: config.fleet.discovery },
      };
      pipeline.swap(built.pipeline, built.strategy);
      pending = built.pending;
      const change = sync.setStatic(next.fleet.workers);
      pools = poolSignature(config.routing, fleet.workers);
      return {
        ...change,
        strategy: built.strategy,
        policies: next.routing.policies.length,
        experiments: next.routing.experiments.length,
        needsRestart,
      };
    },
    countReload: (result) => lifecycle.reload(result),
    async drain(timeoutMs) {
      return front.drain(frontServer, timeoutMs, log);
    },
    close,
  };
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    // Draining in-flight streams is the lifecycle's job (SIGTERM); close() itself never waits on a client.
    server.closeAllConnections();
  });
}
