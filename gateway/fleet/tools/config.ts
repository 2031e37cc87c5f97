import { z } from 'zod';

/**
 * Prefetch: shortly before the predicted return, a warm-up request (the
 * tool-call turn's own prompt, `max_tokens: 1`) goes to the holding worker so
 * the engine brings the prefix back into GPU memory (from its CPU tier, or by
 * recomputing it) while the tool still runs. Engine-neutral: no engine offers
 * an external "load these blocks into GPU" call, but every engine does this
 * for a request. Keeps each pending session's request body in memory
 * (at most `maxSessions` of them) until its follow-up arrives.
 */
export const prefetchConfigSchema = z.strictObject({
  enabled: z.boolean().default(false),
  /** Sent at this quantile of the tool's learned return delay, minus `leadMs`; never before the tool has `minSamples`. */
  quantile: z.number().min(0).max(0.99).default(0.1),
  /** How much earlier than that quantile: the warm-up's own queueing and load-back time. */
  leadMs: z.number().int().min(0).default(300),
  /** Warm-ups in flight at most; one due while the bound is full is skipped (a late warm-up helps no one). */
  maxConcurrent: z.number().int().min(1).max(4096).default(4),
  timeoutMs: z.number().int().min(1).default(10_000),
  /**
   * vLLM's request `priority` for the warm-up (higher = later under
   * `--scheduling-policy priority`). Unset: not sent, since vLLM refuses a
   * non-zero priority when priority scheduling is off.
   */
  priority: z.number().int().optional(),
});
export type PrefetchConfig = z.infer<typeof prefetchConfigSchema>;

/**
 * Tool-call aware KV retention (gateway/fleet/tools/): off by default. When on,
 * a chat turn that ends in tool calls is remembered per session; its follow-up
 * (the request whose last message is the tool's result) goes back to the
 * worker that holds the prefix, and the engine API named by `engine` is asked
 * to keep that prefix until the learned return time.
 */
export const toolRetentionConfigSchema = z.strictObject({
  enabled: z.boolean().default(false),
  /** Pending tool calls remembered at most (least recently seen dropped first). */
  maxSessions: z.number().int().min(1).max(10_000_000).default(100_000),
  /** Tool names with a learned latency distribution at most (one fixed-size histogram each). */
  maxTools: z.number().int().min(1).max(100_000).default(1024),
  /** A pending tool call older than this is forgotten: the agent gave up or went elsewhere. */
  sessionTtlMs: z
    .number()
    .int()
    .min(1)
    .default(30 * 60_000),
  /** The prefix is kept until this quantile of the tool's learned return delay. */
  retainQuantile: z.number().min(0.5).max(0.999).default(0.95),
  /** Keep time before a tool has `minSamples` observations (and the cap of any learned one). */
  defaultRetainMs: z.number().int().min(1).default(60_000),
  maxRetainMs: z
    .number()
    .int()
    .min(1)
    .default(10 * 60_000),
  minSamples: z.number().int().min(1).default(5),
  /**
   * How to protect the prefix on the engine. `none`: routing affinity only (the
   * index's CPU-tier blocks are still credited). `lmcache`: the LMCache
   * controller's `pin` of the turn's prompt tokens (tokenized by the worker's
   * `/tokenize`) on the worker's instance, for the predicted keep time.
   */
  engine: z.enum(['none', 'lmcache']).default('none'),
  /** LMCache controller URL; default: the worker's own URL (the simulator serves `/pin` there). */
  controllerUrl: z.url().optional(),
  /** LMCache storage location to pin on. */
  location: z.string().min(1).default('LocalCPUBackend'),
  /** Engine API calls give up after this. */
  timeoutMs: z.number().int().min(1).default(2000),
  prefetch: prefetchConfigSchema.prefault({}),
});
export type ToolRetentionConfig = z.infer<typeof toolRetentionConfigSchema>;
