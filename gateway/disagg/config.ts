import { z } from 'zod';

/**
 * P/D balance advice (`disaggregation.planner`): the service levels the
 * recommended prefill:decode worker counts aim for, and how much history they
 * are computed from. See planner.ts for the formulas.
 */
export const plannerConfigSchema = z.strictObject({
  /** Time to first token to meet (mean), ms. */
  targetTtftMs: z.number().positive().default(2000),
  /** Inter-token latency to meet (mean), ms. */
  targetItlMs: z.number().positive().default(50),
  /** Sliding window of observations, seconds. */
  windowSeconds: z.number().positive().default(120),
  /** Highest prefill utilisation planned for, whatever the TTFT target allows (queues explode near 1). */
  maxUtilisation: z.number().gt(0).max(1).default(0.8),
});
export type PlannerConfig = z.infer<typeof plannerConfigSchema>;

/**
 * Prefill/decode disaggregation (`disaggregation:`). Active for any routing
 * pool (a policy's `pool`, or the whole fleet of a model) that has workers with
 * `role: prefill` and workers with `role: decode` (or `both`); pools without
 * prefill workers route as usual.
 */
export const disaggConfigSchema = z.strictObject({
  /** false: roles are ignored and every request routes as usual (whole requests may then land on prefill workers). */
  enabled: z.boolean().default(true),
  /**
   * `conditional`: disaggregate only when the uncached prefill exceeds
   * `minUncachedTokens` and the prefill pool is not saturated; `always`:
   * whenever a prefill worker is available.
   */
  mode: z.enum(['conditional', 'always']).default('conditional'),
  /**
   * Prompt tokens not already cached on the decode worker above which a request
   * is disaggregated. Default from bench/results/disagg.md: below it, the
   * prefill leg's round trip and KV transfer cost more TTFT than the little
   * prefill they take off the decode worker saves in ITL.
   */
  minUncachedTokens: z.number().int().min(0).default(1024),
  /** The prefill pool counts as saturated when its least-loaded worker has this many prompt tokens queued. */
  maxPrefillQueueTokens: z.number().int().min(1).default(32_768),
  /**
   * Weight of the KV blocks to transfer against decode load when picking the
   * decode worker: cost = transferWeight × (promptBlocks − overlap + queued prefill blocks) + decode blocks.
   */
  transferWeight: z.number().min(0).max(100).default(0.1),
  /** Other prefill workers tried after a failed prefill leg before serving aggregated on the decode worker. */
  prefillRetries: z.number().int().min(0).max(10).default(1),
  planner: plannerConfigSchema.prefault({}),
});
export type DisaggConfig = z.infer<typeof disaggConfigSchema>;
