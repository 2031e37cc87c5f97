import { performance } from 'node:perf_hooks';
import type { BlockHasher } from '../index/block-hash.js';
import { UnsupportedPromptError } from './chat-template.js';
import { withMediaPlaceholders } from './media.js';
import { boundIds, boundText } from './context-bound.js';
import type { RemoteChatRequest, RemoteTokenizer } from './remote-tokenizer.js';
import type { PromptTokenizer } from './tokenizer.js';

export type PromptKind = 'chat' | 'completion';

/** A prompt cut into full KV blocks and hashed, as the index sees it (and the gateway's strategies, which import it). */
export interface PromptBlocks {
  readonly tokenCount: number;
  readonly blockSize: number;
  /** Chained block hashes, one per full block, in prompt order. */
  readonly hashes: readonly bigint[];
  /** Hashing stopped before this block, which covers media the engine keys by content (`hashes.length` === block). */
  readonly stoppedAt?: { readonly reason: 'multimodal'; readonly block: number };
}

/** Turns an OpenAI request body into the token ids the engine will compute; undefined when it cannot say exactly. */
export interface PromptTokenSource {
  tokenize(body: Record<string, unknown>, kind: PromptKind): Promise<number[] | undefined>;
}

/** A chat body read the way vLLM's ChatCompletionRequest defaults it. */
interface ChatPrompt {
  messages: unknown[];
  tools: unknown[] | undefined;
  documents: unknown[] | undefined;
  templateKwargs: Record<string, unknown> | undefined;
  chatTemplate: string | undefined;
  addGenerationPrompt: boolean;
  continueFinalMessage: boolean;
  addSpecialTokens: boolean;
}

type CompletionPrompt = { text: string; addSpecialTokens: boolean } | { ids: number[] };

export interface LocalSourceOptions {
  /**
   * The model's context length: a prompt with at least this many tokens is refused with
   * ContextLengthError, and tokenization stops as soon as that is certain (context-bound.ts).
   */
  maxModelLen?: number | undefined;
}

/** Local source: the model's tokenizer and chat template, in this process, with the segment cache. */
export function localTokenSource(tokenizer: PromptTokenizer, options: LocalSourceOptions = {}): PromptTokenSource {
  const limit = options.maxModelLen;
  // With truncate_prompt_tokens the engine keeps the prompt's tail, so a long prompt is no error.
  const bounded = (body: Record<string, unknown>) => (limit !== undefined && !truncates(body) ? limit : undefined);
  const bound = async (text: string, body: Record<string, unknown>) => {
    const l = bounded(body);
    if (l !== undefined) await boundText(text, l, tokenizer.lengths, (prefix) => tokenizer.countTokens(prefix));
  };
  const checked = (ids: number[], body: Record<string, unknown>) => {
    const l = bounded(body);
    if (l !== undefined) boundIds(ids, l);
    return truncate(ids, body);
  };
  return {
    async tokenize(body, kind) {
      if (kind === 'chat') {
        const chat = chatPrompt(body);
        // A per-request template may or may not be honoured by the server (vLLM gates it); do not guess.
        if (!chat || chat.chatTemplate !== undefined || !tokenizer.hasChatTemplate) return undefined;
        const text = tokenizer.renderChat(chat.messages, {
          tools: chat.tools,
          documents: chat.documents,
          templateKwargs: chat.templateKwargs,
          addGenerationPrompt: chat.addGenerationPrompt,
          continueFinalMessage: chat.continueFinalMessage,
        });
        await bound(text, body);
        return checked(await tokenizer.encodeCached(text, chat.addSpecialTokens), body);
      }
      const prompt = completionPrompt(body);
      if (!prompt) return undefined;
      if ('ids' in prompt) return checked(prompt.ids, body);
      await bound(prompt.text, body);
      return checked(await tokenizer.tokenizeCompletion(prompt.text, prompt.addSpecialTokens), body);
    },
  };
}

/** Remote source: the worker's own `POST /tokenize` (token-id prompts need no call). */
export function remoteTokenSource(remote: RemoteTokenizer): PromptTokenSource {
  return {
    async tokenize(body, kind) {
      const model = typeof body.model === 'string' ? body.model : undefined;
      if (!model) return undefined;
      if (kind === 'chat') {
        const chat = chatPrompt(body);
        if (!chat) return undefined;
        const request: RemoteChatRequest = {
          messages: chat.messages,
          add_generation_prompt: chat.addGenerationPrompt,
          continue_final_message: chat.continueFinalMessage,
          add_special_tokens: chat.addSpecialTokens,
        };
        if (chat.tools !== undefined) request.tools = chat.tools;
        if (chat.templateKwargs !== undefined) request.chat_template_kwargs = chat.templateKwargs;
        if (chat.chatTemplate !== undefined) request.chat_template = chat.chatTemplate;
        return truncate(await remote.tokenizeChat(model, request), body);
      }
      const prompt = completionPrompt(body);
      if (!prompt) return undefined;
      if ('ids' in prompt) return truncate(prompt.ids, body);
      return truncate(await remote.tokenizeCompletion(model, prompt.text, prompt.addSpecialTokens), body);
    },
  };
}

export interface PromptBlocksOptions {
  source: PromptTokenSource;
  hasher: BlockHasher;
  /** Must equal the engines' block size. */
  blockSize: number;
  /** Hash seed for the adapter (null: base model); `model` is the request's model name. */
  seedFor: (lora: string | null, model: string) => bigint;
  /** Maps a request's model name to its LoRA adapter name, or null for a base model. */
  loraOf?: (model: string) => string | null;
  /** Token id of MEDIA_START in the tokenizer; without it a prompt with media parts is not hashed at all. */
  mediaStartId?: number | undefined;
  /** Called after each tokenization that produced ids (for the tokenization-time metric). */
  observe?: ((seconds: number, tokens: number, kind: PromptKind) => void) | undefined;
  now?: (() => number) | undefined;
}

export type PromptBlocksFn = (
  body: Record<string, unknown>,
  model: string,
  kind?: PromptKind,
) => Promise<PromptBlocks | undefined>;

/**
 * The gateway's `PromptBlocksProvider`: body -> token ids -> chained hashes of
 * the full blocks. Resolves undefined when the prompt cannot be reproduced
 * exactly (batch prompts, media parts, malformed messages, per-request
 * templates); rejects only on real failures (e.g. the remote source timed out).
 * `kind` defaults from the body shape (`messages` -> chat), for callers that do
 * not pass it yet.
 */
export function createPromptBlocksProvider(options: PromptBlocksOptions): PromptBlocksFn {
  if (!Number.isInteger(options.blockSize) || options.blockSize <= 0)
    throw new RangeError(`blockSize must be a positive integer, got ${options.blockSize}`);
  const now = options.now ?? (() => performance.now());
  return async (body, model, kind) => {
    const k: PromptKind = kind ?? (Array.isArray(body.messages) ? 'chat' : 'completion');
    const started = now();
    const media = k === 'chat' && Array.isArray(body.messages) ? withMediaPlaceholders(body.messages) : undefined;
    if (media && options.mediaStartId === undefined) return undefined;
    let ids: number[] | undefined;
    try {
      ids = await options.source.tokenize(media ? { ...body, messages: media.messages } : body, k);
    } catch (err) {
      if (err instanceof UnsupportedPromptError) return undefined;
      throw err;
    }
    if (!ids) return undefined;
    options.observe?.((now() - started) / 1000, ids.length, k);
    const seed = options.seedFor(options.loraOf?.(model) ?? null, model);
    const bs = options.blockSize;
    const mediaAt = media ? ids.indexOf(options.mediaStartId!) : -1;
    const stop = mediaAt >= 0 ? Math.floor(mediaAt / bs) : undefined;
    const hashed = stop === undefined ? ids : ids.slice(0, stop * bs);
    return {
      tokenCount: ids.length,
      blockSize: bs,
      hashes: options.hasher.hashBlocks(hashed, bs, seed, undefined, saltOf(body)),
      ...(stop === undefined ? {} : { stoppedAt: { reason: 'multimodal' as const, block: stop } }),
    };
  };
}

function chatPrompt(body: Record<string, unknown>): ChatPrompt | undefined {
  if (!Array.isArray(body.messages) || body.messages.length === 0) return undefined;
  const kwargs = isObject(body.chat_template_kwargs) ? body.chat_template_kwargs : undefined;
  return {
    messages: body.messages,
    tools: Array.isArray(body.tools) ? body.tools : undefined,
    documents: Array.isArray(body.documents) ? body.documents : undefined,
    templateKwargs: kwargs,
    chatTemplate: typeof body.chat_template === 'string' ? body.chat_template : undefined,
    addGenerationPrompt: typeof body.add_generation_prompt === 'boolean' ? body.add_generation_prompt : true,
    continueFinalMessage: body.continue_final_message === true,
    addSpecialTokens: body.add_special_tokens === true,
  };
}

/** One prompt only: a string, a token-id list, or a one-element list of either. A batch has no single prefix to route by. */
function completionPrompt(body: Record<string, unknown>): CompletionPrompt | undefined {
  const addSpecialTokens = typeof body.add_special_tokens === 'boolean' ? body.add_special_tokens : true;
  let prompt = body.prompt;
  if (Array.isArray(prompt) && prompt.length === 1 && (typeof prompt[0] === 'string' || Array.isArray(prompt[0])))
    prompt = prompt[0];
  if (typeof prompt === 'string') return { text: prompt, addSpecialTokens };
  if (Array.isArray(prompt) && prompt.length > 0 && prompt.every(isTokenId)) return { ids: prompt as number[] };
  return undefined;
}

function truncates(body: Record<string, unknown>): boolean {
  const n = body.truncate_prompt_tokens;
  return typeof n === 'number' && Number.isInteger(n) && n > 0;
}

/** vLLM's `truncate_prompt_tokens`: keep the last N tokens (left truncation). */
function truncate(ids: number[], body: Record<string, unknown>): number[] {
  const n = body.truncate_prompt_tokens;
  return typeof n === 'number' && Number.isInteger(n) && n > 0 && ids.length > n ? ids.slice(ids.length - n) : ids;
}

/** vLLM's `cache_salt` (chat and completions): blocks computed under one salt are reused only by requests with the same salt. */
function saltOf(body: Record<string, unknown>): string | null {
  return typeof body.cache_salt === 'string' && body.cache_salt !== '' ? body.cache_salt : null;
}

function isTokenId(value: unknown): boolean {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= 0xffffffff;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
