import { z } from 'zod';

/** How requests are routed: the default strategy and the session header. */
export const routingConfigSchema = z.strictObject({
  /** Strategy name as registered in `strategies/registry.ts` (= file name = metric label). */
  strategy: z.string().min(1).default('least-load'),
  /** The strategy's parameters; validated by the strategy's own schema at start-up. */
  params: z.record(z.string(), z.unknown()).default({}),
  /** Header whose value keys session affinity (lower-cased on load). */
  sessionHeader: z.string().min(1).default('x-session-id').transform((h) => h.toLowerCase()),
});
export type RoutingConfig = z.infer<typeof routingConfigSchema>;
