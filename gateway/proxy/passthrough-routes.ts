import { z } from 'zod';

/**
 * Which engine routes the public port passes through. vLLM's API server mixes
 * per-request routes with ones that change the engine for every tenant (load
 * a LoRA adapter from any path on the worker's disk, drop the prefix cache,
 * put the engine to sleep, run arbitrary RPCs), and a pass-through picks one
 * worker at random, so those would also leave the fleet inconsistent. Only
 * per-request and read-only routes go through; state-changing ones are
 * refused unless the operator opens them; anything else is unknown and
 * refused too, because vLLM keeps adding admin routes and a new one must not
 * become public by default (a read-only route we do not know yet costs one
 * config line to open).
 */
export const passthroughConfigSchema = z.strictObject({
  /**
   * Exact paths (`/v1/load_lora_adapter`, `/sleep`...) forwarded despite the
   * rules above, to one worker at a time. For fleet-wide LoRA changes use the
   * admin port's `/lora/load` and `/lora/unload` instead.
   */
  allowAdminRoutes: z.array(z.string().regex(/^\/[^?#\s]*$/, 'must be a path starting with / (no query)')).default([]),
});
export type PassthroughConfig = z.infer<typeof passthroughConfigSchema>;

/** Per-request routes of vLLM's OpenAI-compatible server (and its Anthropic, SageMaker and pooling fronts). */
const PER_REQUEST = new Set([
  '/tokenize',
  '/detokenize',
  '/version',
  '/load',
  '/ping',
  '/invocations',
  '/v1/models',
  '/v1/embeddings',
  '/v1/responses',
  '/v1/messages',
  '/v1/messages/count_tokens',
  '/v1/audio/transcriptions',
  '/v1/audio/translations',
  '/pooling',
  '/classify',
  '/score',
  '/v1/score',
  '/rerank',
  '/v1/rerank',
  '/v2/rerank',
]);

/** `GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel` act on one stored response, not on the engine. */
const PER_REQUEST_PATTERNS = [/^\/v1\/responses\/[^/]+(\/cancel)?$/];

/**
 * State-changing or developer routes (vLLM: runtime LoRA updating, VLLM_SERVER_DEV_MODE,
 * profiler, elastic EP, RLHF weight sync; SGLang's equivalents). `/server_info` and
 * `/is_sleeping` change nothing but are dev-mode routes that reveal the engine's config.
 */
const ADMIN = new Set([
  '/v1/load_lora_adapter',
  '/v1/unload_lora_adapter',
  '/reset_prefix_cache',
  '/reset_mm_cache',
  '/reset_encoder_cache',
  '/sleep',
  '/wake_up',
  '/is_sleeping',
  '/pause',
  '/resume',
  '/is_paused',
  '/collective_rpc',
  '/server_info',
  '/start_profile',
  '/stop_profile',
  '/scale_elastic_ep',
  '/is_scaling_elastic_ep',
  '/update_weights',
  '/init_weight_transfer_engine',
  '/get_world_size',
  '/flush_cache',
  '/update_weights_from_disk',
  '/update_weights_from_distributed',
  '/load_lora_adapter',
  '/unload_lora_adapter',
]);

export type PassthroughVerdict = 'forward' | 'admin' | 'unknown';

/** What the pass-through does with `path` (no query string): forward it, or refuse it as admin or unknown. */
export function classifyPassthrough(path: string, config: PassthroughConfig): PassthroughVerdict {
  if (config.allowAdminRoutes.includes(path)) return 'forward';
  if (PER_REQUEST.has(path) || PER_REQUEST_PATTERNS.some((p) => p.test(path))) return 'forward';
  return ADMIN.has(path) ? 'admin' : 'unknown';
}
