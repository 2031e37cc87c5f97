import { z } from 'zod';
import { adminConfigSchema } from '../gateway/admin.js';
import { fleetConfigSchema } from '../gateway/fleet.js';
import { upstreamConfigSchema } from '../gateway/forward.js';
import { routingConfigSchema } from '../gateway/routing-config.js';
import { serverConfigSchema } from '../gateway/server.js';
import { modelsConfigSchema } from '../gateway/models-config.js';
import { disaggConfigSchema } from '../gateway/disagg/config.js';
import { loadSharingConfigSchema } from '../gateway/load-sharing.js';

/**
 * The whole gateway config, assembled from the sections that live beside the
 * code they configure. Every object is strict: an unknown key is an error, not
 * a silently ignored typo.
 */
export const gatewayConfigSchema = z.strictObject({
  server: serverConfigSchema.prefault({}),
  admin: adminConfigSchema.prefault({}),
  upstream: upstreamConfigSchema.prefault({}),
  fleet: fleetConfigSchema,
  models: modelsConfigSchema.prefault({}),
  routing: routingConfigSchema.prefault({}),
  disaggregation: disaggConfigSchema.prefault({}),
  /** Off when absent: share in-flight load with the other gateway replicas over NATS (gateway/load-sharing.ts). */
  loadSharing: loadSharingConfigSchema.optional(),
});

export type GatewayConfig = z.infer<typeof gatewayConfigSchema>;
/** What a config file may leave out (defaults filled in by parsing). */
export type GatewayConfigInput = z.input<typeof gatewayConfigSchema>;
