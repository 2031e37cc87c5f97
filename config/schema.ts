import { z } from 'zod';
import { adminConfigSchema } from '../gateway/ops/admin.js';
import { fleetConfigSchema } from '../gateway/fleet/fleet.js';
import { upstreamConfigSchema } from '../gateway/proxy/forward.js';
import { routingConfigSchema } from '../gateway/routing/routing-config.js';
import { serverConfigSchema } from '../gateway/front/server.js';
import { modelsConfigSchema } from '../gateway/fleet/models-config.js';
import { disaggConfigSchema } from '../gateway/disagg/config.js';
import { loadSharingConfigSchema } from '../gateway/fleet/load-sharing.js';
import { loraConfigSchema } from '../gateway/fleet/adapters.js';
import { flowConfigSchema } from '../gateway/flow/config.js';
import { toolRetentionConfigSchema } from '../gateway/fleet/tools/config.js';

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
  /** LoRA adapters loaded at runtime: how often workers are asked which they have (gateway/fleet/adapters.ts). */
  lora: loraConfigSchema.prefault({}),
  /** Off when absent: share in-flight load with the other gateway replicas over NATS (gateway/fleet/load-sharing.ts). */
  loadSharing: loadSharingConfigSchema.optional(),
  /** Off by default: priority classes, tenant fairness and SLO-aware admission (gateway/flow/). */
  flow: flowConfigSchema.prefault({}),
  /** Off by default: keep an agent's KV through its tool calls (gateway/fleet/tools/). */
  toolRetention: toolRetentionConfigSchema.prefault({}),
});

export type GatewayConfig = z.infer<typeof gatewayConfigSchema>;
/** What a config file may leave out (defaults filled in by parsing). */
export type GatewayConfigInput = z.input<typeof gatewayConfigSchema>;
