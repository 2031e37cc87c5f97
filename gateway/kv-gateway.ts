import type { Logger } from 'pino';
import type { GatewayConfig } from '../config/schema.js';
import { createDiscovery, type Discovery, type DiscoveryDeps } from './fleet/discovery/discovery.js';
import { startGateway, type Gateway } from './gateway.js';
import { registerKvMetrics } from './ops/kv-metrics.js';
import { buildKvServices } from './kv-services.js';
import { registerMemoryMetrics } from './ops/lifecycle.js';

/** How long events a worker sent before going down may still be arriving. */
const STALE_EVENTS_MS = 500;

export interface KvGatewayOptions {
  log: Logger;
  defaultMetrics?: boolean;
  /** Tests: a stub DNS resolver or in-cluster Kubernetes paths for `fleet.discovery`. */
  discovery?: Pick<DiscoveryDeps, 'resolver' | 'kubeEnv' | 'random'>;
}

/**
 * Starts the gateway with the KV services the config asks for: tokenizers,
 * block hashing, one index per model, and an event source per worker with
 * `kvEvents`; then `fleet.discovery`, whose changes go through the dynamic
 * fleet (workers joining get an event source, workers leaving lose theirs).
 */
export async function startKvGateway(config: GatewayConfig, options: KvGatewayOptions): Promise<Gateway> {
  // eslint-disable-next-line prefer-const -- workerUrlFor may run before the assignment; a const would throw there
  let gateway: Gateway | undefined;
  const { log } = options;
  const kv = await buildKvServices(config, {
    log,
    workerUrlFor: (model) => gateway?.fleet.candidates(model)[0]?.url,
  });
  gateway = await startGateway(config, {
    log,
    defaultMetrics: options.defaultMetrics,
    services: { kvIndexer: kv.matcher },
    promptBlocks: kv.promptBlocks,
    indexStats: () => kv.stats(),
    onMetrics: (registry) => {
      registerKvMetrics(registry, kv);
      registerMemoryMetrics(registry, kv.tokenizers);
    },
    workerHooks: { added: (w) => kv.addWorker(w), removed: (id) => kv.removeWorker(id) },
  });
  const fleet = gateway.fleet;
  // A worker that went down (health failed, breaker opened) takes its cache with it, as far as
  // routing can tell: drop its blocks now, and once more a moment later, because events it sent just
  // before dying may still sit in our socket. Its event source reconnects by itself and rebuilds
  // them; an engine restart also restarts its sequence numbers, which resets the worker again.
  const clear = (id: string) => {
    for (const indexer of kv.indexers.values()) indexer.clearWorker(id);
  };
  fleet.onStatus((worker, up) => {
    if (up) return;
    clear(worker.id);
    setTimeout(() => {
      if (worker.down && fleet.has(worker)) clear(worker.id);
    }, STALE_EVENTS_MS).unref();
  });
  await kv.start();

  let discovery: Discovery | undefined;
  const spec = config.fleet.discovery;
  if (spec !== undefined && spec.type !== 'static') {
    discovery = createDiscovery(spec, { ...options.discovery, log });
    const g = gateway;
    try {
      await discovery.start((workers) => g.setDiscovered(workers));
    } catch (err) {
      await g.close();
      await kv.stop();
      throw err;
    }
    log.info({ discovery: discovery.name, workers: fleet.workers.length }, 'discovery started');
  }

  const close = gateway.close.bind(gateway);
  let closing: Promise<void> | undefined;
  return Object.assign(gateway, {
    close() {
      closing ??= (async () => {
        await discovery?.stop();
        await close();
        await kv.stop();
      })();
      return closing;
    },
  });
}
