import { z } from 'zod';

/**
 * Where a model's prompts get their token ids. `local` loads `tokenizer.json`
 * (and `tokenizer_config.json` for the chat template) from a directory;
 * `remote` asks a worker's vLLM `POST /tokenize`, exact by construction at the
 * cost of one extra hop; `none` routes that model without prompt blocks.
 */
export const tokenizerConfigSchema = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('local'), dir: z.string().min(1) }),
  z.strictObject({ type: z.literal('remote'), timeoutMs: z.number().int().min(1).default(2000) }),
  z.strictObject({ type: z.literal('none') }),
]);

/** One served model, keyed by the name clients send in `model`. */
export const modelConfigSchema = z.strictObject({
  tokenizer: tokenizerConfigSchema.default({ type: 'none' }),
  /** KV block size in tokens; must equal the engines' (`--block-size`). */
  blockSize: z.number().int().min(1).max(4096).default(16),
  /** LoRA adapters served under their own model names; their blocks never match the base model's. */
  loras: z.array(z.string().min(1)).default([]),
  /**
   * The engines' context length (vLLM's `--max-model-len`). With it, a prompt of at least this
   * many tokens is answered at once with the engine's own 400, and tokenizing a huge prompt stops
   * as soon as it is certainly too long. Without it, the tokenizer's `model_max_length` only bounds
   * the work: such a prompt is routed without prompt blocks and the engine answers.
   */
  maxModelLen: z.number().int().min(2).optional(),
  /** Upper bound on the segment cache of the local tokenizer, in MiB, and again on its prompt-prefix memo. */
  tokenCacheMiB: z.number().min(1).default(64),
});
export type ModelConfig = z.infer<typeof modelConfigSchema>;

export const modelsConfigSchema = z.record(z.string().min(1), modelConfigSchema);
export type ModelsConfig = z.infer<typeof modelsConfigSchema>;
