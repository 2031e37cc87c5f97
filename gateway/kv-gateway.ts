import type { Logger } from 'pino';
import type { GatewayConfig } from '../config/schema.js';
import { startGateway, type Gateway } from './gateway.js';
import { registerKvMetrics } from './kv-metrics.js';
import { buildKvServices } from './kv-services.js';

/** How long events a worker sent before going down may still be arriving. */
const STALE_EVENTS_MS = 500;

/**
 * Starts the gateway with the KV services the config asks for: tokenizers,
 * block hashing, one index per model, and an event source per worker with `kvEvents`.
 */
export async function startKvGateway(config: GatewayConfig, options: { log: Logger; defaultMetrics?: boolean }): Promise<Gateway> {
  let gateway: Gateway | undefined;
  const kv = await buildKvServices(config, {
    log: options.log,
    workerUrlFor: (model) => gateway?.fleet.candidates(model)[0]?.url,
  });
  gateway = await startGateway(config, {
    ...options,
    services: { kvIndexer: kv.matcher },
    promptBlocks: kv.promptBlocks,
    indexStats: () => kv.stats(),
    onMetrics: (registry) => registerKvMetrics(registry, kv),
  });
  // A worker that went down (health failed, breaker opened) takes its cache with it, as far as
  // routing can tell: drop its blocks now, and once more a moment later, because events it sent just
  // before dying may still sit in our socket. Its event source reconnects by itself and rebuilds
  // them; an engine restart also restarts its sequence numbers, which resets the worker again.
  const clear = (id: string) => { for (const indexer of kv.indexers.values()) indexer.clearWorker(id); };
  gateway.fleet.onStatus((worker, up) => {
    if (up) return;
    clear(worker.id);
    setTimeout(() => { if (worker.down) clear(worker.id); }, STALE_EVENTS_MS).unref();
  });
  await kv.start();
  const close = gateway.close.bind(gateway);
  return Object.assign(gateway, {
    async close() {
      await close();
      await kv.stop();
    },
  });
}
