import type { Logger } from 'pino';
import type { GatewayConfig } from '../config/schema.js';
import { startGateway, type Gateway } from './gateway.js';
import { registerKvMetrics } from './kv-metrics.js';
import { buildKvServices } from './kv-services.js';

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
  await kv.start();
  const close = gateway.close.bind(gateway);
  return Object.assign(gateway, {
    async close() {
      await close();
      await kv.stop();
    },
  });
}
