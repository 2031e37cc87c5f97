import { mediaMessages, mediaSpans, type MediaSpan } from './media.js';
import type { ChatMessage } from '../../indexer/tokenize/chat-template.js';
import type { SimTokenizer } from './text.js';
import type { SimLora, SimLoras } from './lora.js';

/**
 * An error answered with vLLM's ErrorResponse body:
 * `{"error": {"message", "type", "param", "code": <http status>}}`
 * (vLLM sets `code` to the status number and `type` to e.g. "BadRequestError").
 */
export class SimHttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type = status === 404 ? 'NotFoundError' : 'BadRequestError',
    readonly param: string | null = null,
  ) {
    super(message);
  }

  body(): { error: { message: string; type: string; param: string | null; code: number } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.status } };
  }
}

export interface OpenAiContext {
  model: string;
  maxModelLen: number;
  /** kv-blocks × block-size: a request needing more could never run. */
  kvCapacityTokens: number;
  /** Tokens a chat request without max_tokens generates before its simulated EOS. */
  defaultChatTokens: number;
  /**
   * vLLM's `--stream-interval`: a streamed response sends the first token at
   * once, then one chunk per this many tokens, and the rest when it finishes.
   */
  streamInterval: number;
  tokenizer: SimTokenizer;
  /** Adapters loaded at runtime; a request may name one instead of the base model. */
  loras: SimLoras;
}

export interface GenerationRequest {
  kind: 'completion' | 'chat';
  promptTokens: number[];
  maxTokens: number;
  finishReason: 'length' | 'stop';
  stream: boolean;
  includeUsage: boolean;
  /** The adapter the request named, or null for the base model. */
  lora: SimLora | null;
  /** vLLM's `cache_salt`: mixed into the first block's hash, so only same-salt requests share blocks. */
  cacheSalt: string | null;
  mediaSpans?: MediaSpan[];
}

type Body = Record<string, unknown>;

const bad = (message: string, param: string | null = null) => new SimHttpError(400, message, 'BadRequestError', param);

export function asObject(body: unknown): Body {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw bad('request body must be a JSON object');
  return body as Body;
}

/**
 * vLLM answers 404 for a model it does not serve; an absent model means the
 * served one. Returns the adapter when the request names a loaded one.
 */
export function checkModel(body: Body, ctx: OpenAiContext): SimLora | null {
  if (body.model === undefined || body.model === null || body.model === ctx.model) return null;
  const lora = typeof body.model === 'string' ? ctx.loras.get(body.model) : undefined;
  if (lora) return lora;
  throw new SimHttpError(404, `The model \`${String(body.model)}\` does not exist.`, 'NotFoundError', 'model');
}

function optInt(body: Body, key: string, min: number): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v))
    throw bad(`${key} must be an integer, got ${JSON.stringify(v)}`, key);
  if (v < min) throw bad(`${key} must be at least ${min}, got ${v}.`, key);
  return v;
}

function optBool(body: Body, key: string): boolean | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw bad(`${key} must be a boolean`, key);
  return v;
}

function common(
  body: Body,
  ctx: OpenAiContext,
): { stream: boolean; includeUsage: boolean; lora: SimLora | null; cacheSalt: string | null } {
  const lora = checkModel(body, ctx);
  const salt = body.cache_salt;
  if (salt !== undefined && salt !== null && (typeof salt !== 'string' || salt === ''))
    throw bad("Parameter 'cache_salt' must be a non-empty string if provided.", 'cache_salt');
  const cacheSalt = typeof salt === 'string' ? salt : null;
  const n = optInt(body, 'n', 1);
  if (n !== undefined && n !== 1) throw bad(`n=${n} is not supported by the simulator: only n=1`, 'n');
  const stream = optBool(body, 'stream') ?? false;
  const options = body.stream_options;
  if (options !== undefined && options !== null) {
    if (!stream) throw bad('Stream options can only be defined when `stream=True`.', 'stream_options');
    if (typeof options !== 'object' || Array.isArray(options))
      throw bad('stream_options must be an object', 'stream_options');
  }
  const includeUsage = stream && (options as { include_usage?: unknown } | null | undefined)?.include_usage === true;
  return { stream, includeUsage, lora, cacheSalt };
}

function checkLength(promptLen: number, maxTokens: number, ctx: OpenAiContext): void {
  if (promptLen === 0) throw bad('the prompt is empty', 'prompt');
  if (promptLen >= ctx.maxModelLen) {
    throw bad(
      `This model's maximum context length is ${ctx.maxModelLen} tokens. However, your request has ${promptLen} input tokens. Please reduce the length of the input messages.`,
    );
  }
  if (promptLen + maxTokens > ctx.maxModelLen) {
    throw bad(
      `This model's maximum context length is ${ctx.maxModelLen} tokens. However, you requested ${promptLen + maxTokens} tokens (${promptLen} in the messages, ${maxTokens} in the completion). Please reduce the length of the messages or completion.`,
      'max_tokens',
    );
  }
  if (promptLen + maxTokens > ctx.kvCapacityTokens) {
    throw bad(
      `the request needs ${promptLen + maxTokens} tokens of KV cache, more than the whole simulated cache holds (${ctx.kvCapacityTokens}); raise --kv-blocks`,
    );
  }
}

function tokenIds(value: unknown[], ctx: OpenAiContext, param: string): number[] {
  const vocabSize = ctx.tokenizer.vocabSize;
  for (const id of value) {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw bad(`${param}: token id ${JSON.stringify(id)} is out of vocabulary (0..${vocabSize - 1})`, param);
    }
  }
  return value as number[];
}

/** `prompt` as vLLM takes it: a string, token ids, or a one-element list of either. */
async function completionPrompt(prompt: unknown, ctx: OpenAiContext): Promise<number[]> {
  if (typeof prompt === 'string') return ctx.tokenizer.prompt.tokenizeCompletion(prompt);
  if (Array.isArray(prompt) && prompt.length > 0) {
    if (typeof prompt[0] === 'number') return tokenIds(prompt, ctx, 'prompt');
    if (prompt.length > 1)
      throw bad('the simulator accepts one prompt per request (batched prompts are not supported)', 'prompt');
    const only: unknown = prompt[0];
    if (typeof only === 'string') return ctx.tokenizer.prompt.tokenizeCompletion(only);
    if (Array.isArray(only) && only.length > 0) return tokenIds(only, ctx, 'prompt');
  }
  throw bad('prompt must be a string, a list of token ids, or a list with one of those', 'prompt');
}

export async function parseCompletion(raw: unknown, ctx: OpenAiContext): Promise<GenerationRequest> {
  const body = asObject(raw);
  const { stream, includeUsage, lora, cacheSalt } = common(body, ctx);
  if (body.prompt === undefined) throw bad('prompt is required', 'prompt');
  const maxTokens = optInt(body, 'max_tokens', 1) ?? 16;
  const promptTokens = await completionPrompt(body.prompt, ctx);
  checkLength(promptTokens.length, maxTokens, ctx);
  return {
    kind: 'completion',
    promptTokens,
    maxTokens,
    finishReason: 'length',
    stream,
    includeUsage,
    lora,
    cacheSalt,
  };
}

export interface ChatInput {
  messages: ChatMessage[];
  tools: unknown[] | undefined;
  addGenerationPrompt: boolean;
  /** vLLM's chat `continue_final_message` and `add_special_tokens` (both false by default). */
  flags?: { continueFinalMessage: boolean; addSpecialTokens: boolean };
  templateKwargs: Record<string, unknown> | undefined;
  /** Media parts (now placeholders in `messages`), by identity, in prompt order. */
  media: string[];
}

export function chatInput(body: Body): ChatInput {
  const messages = body.messages;
  if (!Array.isArray(messages) || messages.length === 0) throw bad('messages must be a non-empty list', 'messages');
  for (const m of messages) {
    if (!m || typeof m !== 'object' || typeof (m as { role?: unknown }).role !== 'string')
      throw bad('each message must be an object with a string role', 'messages');
  }
  if (body.tools !== undefined && body.tools !== null && !Array.isArray(body.tools))
    throw bad('tools must be a list', 'tools');
  const kwargs = body.chat_template_kwargs;
  if (kwargs !== undefined && kwargs !== null && (typeof kwargs !== 'object' || Array.isArray(kwargs)))
    throw bad('chat_template_kwargs must be an object', 'chat_template_kwargs');
  const addGenerationPrompt = optBool(body, 'add_generation_prompt') ?? true;
  const continueFinalMessage = optBool(body, 'continue_final_message') ?? false;
  if (addGenerationPrompt && continueFinalMessage) {
    throw bad('Cannot set both `continue_final_message` and `add_generation_prompt` to True.');
  }
  const mm = mediaMessages(messages);
  return {
    messages: mm.messages as ChatMessage[],
    media: mm.media,
    tools: (body.tools as unknown[] | null | undefined) ?? undefined,
    addGenerationPrompt,
    flags: { continueFinalMessage, addSpecialTokens: optBool(body, 'add_special_tokens') ?? false },
    templateKwargs: (kwargs as Record<string, unknown> | null | undefined) ?? undefined,
  };
}

export async function tokenizeChatInput(input: ChatInput, ctx: OpenAiContext): Promise<number[]> {
  try {
    return await ctx.tokenizer.prompt.tokenizeChat(input.messages, {
      tools: input.tools,
      addGenerationPrompt: input.addGenerationPrompt,
      ...input.flags,
      templateKwargs: input.templateKwargs,
    });
  } catch (err) {
    throw bad(`cannot render the chat template: ${(err as Error).message}`, 'messages');
  }
}

export async function parseChat(raw: unknown, ctx: OpenAiContext): Promise<GenerationRequest> {
  const body = asObject(raw);
  const { stream, includeUsage, lora, cacheSalt } = common(body, ctx);
  const input = chatInput(body);
  const explicit = optInt(body, 'max_completion_tokens', 1) ?? optInt(body, 'max_tokens', 1);
  const promptTokens = await tokenizeChatInput(input, ctx);
  // Without a cap a real model stops at EOS; the simulator "emits EOS" after a fixed count.
  const maxTokens = explicit ?? Math.max(1, Math.min(ctx.defaultChatTokens, ctx.maxModelLen - promptTokens.length));
  checkLength(promptTokens.length, maxTokens, ctx);
  return {
    kind: 'chat',
    promptTokens,
    maxTokens,
    finishReason: explicit === undefined ? 'stop' : 'length',
    stream,
    includeUsage,
    lora,
    cacheSalt,
    mediaSpans: await mediaSpans(promptTokens, input.media, ctx.tokenizer),
  };
}

export function randomHex(bytes: number): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(bytes))).toString('hex');
}
