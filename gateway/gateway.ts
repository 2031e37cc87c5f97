import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { GatewayConfig } from '../config/schema.js';
import { createAdminHandler } from './ops/admin.js';
import { Fleet } from './fleet/fleet.js';
import { Transport } from './proxy/forward.js';
import { HealthChecker, type HealthProbe } from './fleet/health.js';
import { GatewayMetrics } from './ops/metrics.js';
import { Passthrough } from './proxy/passthrough.js';
import type { PromptBlocksProvider } from './routing/pipeline.js';
import { createFrontHandler } from './front/server.js';
import { answerClientError, answerExpectation, frontServerOptions, requireHost } from './front/client-limits.js';
import { configureUpstreamAuth } from './proxy/upstream-auth.js';
import { diffWorkers, type DiscoveredWorker } from './fleet/discovery/discovery.js';
import { FleetSync, type FleetChange, type WorkerHooks } from './fleet/fleet-sync.js';
import { dropWorkerSeries, FrontTracker, registerLifecycleMetrics } from './ops/lifecycle.js';
import { buildRouting, LivePipeline, poolSignature, restartOnlyChanges, type RoutingDeps } from './routing/reload.js';
import { Disaggregation } from './disagg/two-leg.js';
import { LoadSharing, natsTransport } from './fleet/load-sharing.js';

export interface GatewayOptions {
  log: Logger;
  /** Services for strategies, by name (e.g. `kvIndexer`); see `StrategyDeps.services`. */
  services?: Record<string, unknown>;
  promptBlocks?: PromptBlocksProvider | undefined;
  /** Extra admin stats, e.g. the KV index's, shown in `/debug/workers`. */
  indexStats?: () => unknown;
  healthProbe?: HealthProbe;
  random?: () => number;
  now?: () => number;
  /** Adds metrics of the services (e.g. the KV index) to the gateway's registry. */
  onMetrics?: (registry: Registry) => void;
  /** Registers prom-client's process metrics (off in tests that start many gateways). */
  defaultMetrics?: boolean | undefined;
  /** Told when workers join or leave at runtime (the KV event sources). */
  workerHooks?: WorkerHooks;
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
 * The composition root: builds every part from the config, wires them
 * request -> policy -> strategy -> fleet/index -> proxy, and starts listening.
 */
export async function startGateway(initialConfig: GatewayConfig, options: GatewayOptions): Promise<Gateway> {
  const { log } = options;
  let config = initialConfig;
  const random = options.random ?? Math.random;
  const now = options.now ?? Date.now;
  const fleet = new Fleet(config.fleet.workers, {
    breaker: config.upstream.breaker,
    log,
    sharedLoad: config.loadSharing !== undefined,
  });
  configureUpstreamAuth(fleet.workers, config.fleet.workers);
  const metrics = new GatewayMetrics(fleet, { defaultMetrics: options.defaultMetrics });
  options.onMetrics?.(metrics.registry);
  let sharing: LoadSharing | undefined;
  if (config.loadSharing) {
    // Not from the injected `random`: two replicas seeded alike would take each other's snapshots for their own.
    const replicaId = randomUUID().slice(0, 13);
    const transport = natsTransport(config.loadSharing, log, `kvgate-${replicaId}`);
    sharing = new LoadSharing({
      fleet,
      transport,
      config: config.loadSharing,
      log,
      replicaId,
      now,
      registry: metrics.registry,
    });
    sharing.start();
  }
  const transport = new Transport(fleet.workers, config.upstream);
  const health = new HealthChecker(fleet, config.fleet.health, log, options.healthProbe);
  const blockSize = Object.values(config.models)[0]?.blockSize ?? 16;
  const lenientPools = config.fleet.discovery !== undefined && config.fleet.discovery.type !== 'static';
  const routingDeps: RoutingDeps = {
    fleet,
    metrics,
    log,
    services: options.services ?? {},
    promptBlocks: options.promptBlocks,
    random,
    now,
    blockSize,
    adminToken: config.admin.token,
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
      hooks: options.workerHooks,
      onChanged: onFleetChanged,
      // Gauges are set at scrape time for current workers only: a departed worker's last values would linger.
      onForgotten: (id) => {
        if (!fleet.workers.some((w) => w.id === id)) dropWorkerSeries(metrics.registry, id);
      },
    },
    config.fleet.workers,
  );
  const passthrough = new Passthrough(fleet, metrics, {
    passClientAuthorization: config.upstream.passClientAuthorization,
  });
  // --- disaggregation (gateway/disagg/): two-leg P/D flow and the P/D balance planner ---
  const disagg = new Disaggregation({
    config: config.disaggregation,
    fleet,
    transport,
    metrics,
    log,
    services: options.services ?? {},
    promptBlocks: options.promptBlocks,
    blockSize,
    now,
  });
  // --- end disaggregation ---

  await health.start();
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
    }),
  );
  const frontServer = createServer(frontServerOptions(config.server), requireHost(front.handler));
  frontServer.on('clientError', answerClientError).on('checkExpectation', answerExpectation);
  const admin = createServer(
    createAdminHandler({ fleet, pipeline, token: config.admin.token, indexStats: options.indexStats, disagg }),
  );
  const url = await listen(frontServer, config.server.host, config.server.port);
  const adminUrl = await listen(admin, config.admin.host, config.admin.port);
  const lifecycle = registerLifecycleMetrics(metrics.registry, {
    fleet,
    draining: () => front.draining,
    drainingWorkers: () => sync.draining,
    discovered: () => sync.discoveredCount,
  });
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

  let discoveredBefore: readonly DiscoveredWorker[] = [];
  let closing: Promise<void> | undefined;
  return {
    url,
    adminUrl,
    fleet,
    metrics,
    get config() {
      return config;
    },
    get draining() {
      return front.draining;
    },
    setDiscovered(workers) {
      const d = diffWorkers(discoveredBefore, workers);
      discoveredBefore = workers;
      lifecycle.discoveryChange(d.added.length, d.removed.length, d.changed.length);
      return sync.setDiscovered(workers);
    },
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
    close() {
      closing ??= (async () => {
        sync.close();
        await Promise.all([closeServer(frontServer), closeServer(admin)]);
        await health.stop();
        await sharing?.close();
        fleet.close();
        passthrough.close();
        await transport.close();
      })();
      return closing;
    },
  };
}

function listen(server: Server, host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const a = server.address() as AddressInfo;
      const shown = a.family === 'IPv6' ? `[${a.address}]` : a.address;
      resolve(`http://${shown === '0.0.0.0' ? '127.0.0.1' : shown === '[::]' ? '[::1]' : shown}:${a.port}`);
    });
  });
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    // Draining in-flight streams is the lifecycle's job (SIGTERM); close() itself never waits on a client.
    server.closeAllConnections();
  });
}
