import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { GatewayConfig } from '../config/schema.js';
import { createAdminHandler } from './admin.js';
import { Fleet } from './fleet.js';
import { Transport } from './forward.js';
import { HealthChecker, type HealthProbe } from './health.js';
import { GatewayMetrics } from './metrics.js';
import { Passthrough } from './passthrough.js';
import { RoutingPipeline, type PromptBlocksProvider } from './pipeline.js';
import { createRoutingPolicy } from './policy.js';
import { createFrontHandler } from './server.js';
import { answerClientError, frontServerOptions } from './client-limits.js';
import { configureUpstreamAuth } from './upstream-auth.js';
import { createStrategy } from './strategies/registry.js';
import { Disaggregation } from './disagg/two-leg.js';

export interface GatewayOptions {
  log: Logger;
  /** Services for strategies, by name (e.g. `kvIndexer`); see `StrategyDeps.services`. */
  services?: Record<string, unknown>;
  promptBlocks?: PromptBlocksProvider;
  /** Extra admin stats, e.g. the KV index's, shown in `/debug/workers`. */
  indexStats?: () => unknown;
  healthProbe?: HealthProbe;
  random?: () => number;
  now?: () => number;
  /** Adds metrics of the services (e.g. the KV index) to the gateway's registry. */
  onMetrics?: (registry: Registry) => void;
  /** Registers prom-client's process metrics (off in tests that start many gateways). */
  defaultMetrics?: boolean;
}

export interface Gateway {
  /** `http://host:port` of the OpenAI-compatible front. */
  readonly url: string;
  readonly adminUrl: string;
  readonly fleet: Fleet;
  readonly metrics: GatewayMetrics;
  close(): Promise<void>;
}

/**
 * The composition root: builds every part from the config, wires them
 * request -> policy -> strategy -> fleet/index -> proxy, and starts listening.
 */
export async function startGateway(config: GatewayConfig, options: GatewayOptions): Promise<Gateway> {
  const { log } = options;
  const random = options.random ?? Math.random;
  const now = options.now ?? Date.now;
  const fleet = new Fleet(config.fleet.workers, { breaker: config.upstream.breaker, log });
  configureUpstreamAuth(fleet.workers, config.fleet.workers);
  const metrics = new GatewayMetrics(fleet, { defaultMetrics: options.defaultMetrics });
  options.onMetrics?.(metrics.registry);
  const transport = new Transport(fleet.workers, config.upstream);
  const health = new HealthChecker(fleet, config.fleet.health, log, options.healthProbe);
  const blockSize = Object.values(config.models)[0]?.blockSize ?? 16;
  const strategyDeps = { random, now, log, workers: fleet.workers, blockSize, services: options.services ?? {} };
  const strategy = createStrategy(config.routing.strategy, config.routing.params, strategyDeps);
  const policy = createRoutingPolicy({ routing: config.routing, strategyDeps, workerById: (id) => fleet.get(id), adminToken: config.admin.token, defaultStrategy: strategy });
  const pipeline = new RoutingPipeline({
    fleet, policy, metrics, log, sessionHeader: config.routing.sessionHeader, honourSession: config.routing.overrides.session,
    promptBlocks: options.promptBlocks, random, now,
  });
  const passthrough = new Passthrough(fleet, metrics, { passClientAuthorization: config.upstream.passClientAuthorization });
  // --- disaggregation (gateway/disagg/): two-leg P/D flow and the P/D balance planner ---
  const disagg = new Disaggregation({
    config: config.disaggregation, fleet, transport, metrics, log, services: options.services ?? {}, promptBlocks: options.promptBlocks, blockSize, now,
  });
  // --- end disaggregation ---

  await health.start();
  const front = createServer(frontServerOptions(config.server),
    createFrontHandler({ config: config.server, fleet, pipeline, transport, passthrough, metrics, log, blockSize, disagg }));
  front.on('clientError', answerClientError);
  const admin = createServer(createAdminHandler({ fleet, pipeline, token: config.admin.token, indexStats: options.indexStats, disagg }));
  const url = await listen(front, config.server.host, config.server.port);
  const adminUrl = await listen(admin, config.admin.host, config.admin.port);
  log.info({ url, adminUrl, strategy: strategy.name, workers: fleet.workers.length, healthy: fleet.healthy.length }, 'gateway ready');

  return {
    url, adminUrl, fleet, metrics,
    async close() {
      await Promise.all([closeServer(front), closeServer(admin)]);
      await health.stop();
      fleet.close();
      passthrough.close();
      await transport.close();
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
