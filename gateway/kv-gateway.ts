import type { Logger } from 'pino';
import type { GatewayConfig } from '../config/schema.js';
import { startGateway, type Gateway } from './gateway.js';

/** Starts the gateway with the KV services (tokenizers, index, event sources) the config asks for. */
export async function startKvGateway(config: GatewayConfig, options: { log: Logger; defaultMetrics?: boolean }): Promise<Gateway> {
  return startGateway(config, options);
}
