import { z } from 'zod';
import { UnsupportedPromptError } from '../../../indexer/tokenize/chat-template.js';
import { PromptTokenizer } from '../../../indexer/tokenize/tokenizer.js';
import { badRequest } from '../errors.js';
import type { InferenceRequest } from '../request.js';
import { jsonObject } from './body.js';

/** Who answers `POST /tokenize` and `POST /detokenize`. */
export const tokenizeConfigSchema = z.strictObject({
  /**
   * `gateway`: the gateway answers itself when it holds the model's tokenizer
   * (and chat template, for the chat form) and its `maxModelLen` is configured;
   * otherwise a worker serving the model does. `worker`: always a worker.
   */
  answeredBy: z.enum(['gateway', 'worker']).default('gateway'),
});
export type TokenizeConfig = z.infer<typeof tokenizeConfigSchema>;

/** A model the gateway can tokenize for: its local tokenizer and the engine's `max_model_len`. */
export interface LocalTokenizer {
  readonly tokenizer: PromptTokenizer;
  readonly maxModelLen: number;
}

/** The models the gateway tokenizes locally, and the name a body without `model` means (vLLM's default model). */
export interface LocalTokenizers {
  get(model: string): LocalTokenizer | undefined;
  /** The only configured model, when there is exactly one. */
  readonly defaultModel: string | undefined;
}

export const ANSWERED_BY = 'x-kvgate-answered-by';

/**
 * The configured models whose tokenizer is local (not `remote`) and whose
 * `maxModelLen` is configured. The tokenizer's own `model_max_length` is not
 * the engine's `max_model_len` (Qwen3-0.6B: 131072 against 40960), so without
 * the configured one a worker answers for that model.
 */
export function localTokenizers(
  tokenizers: ReadonlyMap<string, unknown>,
  models: Readonly<Record<string, { readonly maxModelLen?: number | undefined }>>,
): LocalTokenizers {
  const own = new Map<string, LocalTokenizer>();
  for (const [model, tokenizer] of tokenizers) {
    if (!(tokenizer instanceof PromptTokenizer)) continue;
    const maxModelLen = models[model]?.maxModelLen;
    if (maxModelLen !== undefined) own.set(model, { tokenizer, maxModelLen });
  }
  const names = Object.keys(models);
  return { get: (model) => own.get(model), defaultModel: names.length === 1 ? names[0] : undefined };
}

type Obj = Record<string, unknown>;

/** What the route hands the front: the request to route to a worker, and maybe the gateway's own answer. */
export interface TokenizeRoute {
  readonly request: InferenceRequest;
  /** The gateway's answer, or undefined when it cannot give vLLM's exact one (then a worker answers). */
  readonly answer: (() => Promise<Obj | undefined>) | undefined;
}

/**
 * Parses `POST /tokenize` or `POST /detokenize` (vLLM's serving_tokenization):
 * the body's model decides who answers. Bad fields are 400s here whoever
 * answers, so a worker never sees a request the gateway would refuse.
 */
export function parseTokenize(
  raw: Buffer,
  route: 'tokenize' | 'detokenize',
  local: LocalTokenizers | undefined,
  config: TokenizeConfig,
  fleetModels: () => ReadonlySet<string>,
): TokenizeRoute {
  const b = jsonObject(raw);
  if (b.model !== undefined && b.model !== null && (typeof b.model !== 'string' || b.model === ''))
    throw badRequest(`'model' must be a non-empty string`, 'model', 'invalid_type');
  const model = typeof b.model === 'string' ? b.model : (local?.defaultModel ?? onlyOne(fleetModels()));
  if (model === undefined)
    throw badRequest(
      `'model' is required: this gateway serves several models (or none yet)`,
      'model',
      'missing_required_parameter',
    );
  const answer = route === 'tokenize' ? checkTokenize(b) : checkDetokenize(b);
  const own = config.answeredBy === 'gateway' ? local?.get(model) : undefined;
  // The worker gets the model spelled out: its default may not be the gateway's.
  const forwarded = b.model === model ? raw : Buffer.from(JSON.stringify({ ...b, model }));
  return {
    request: {
      kind: 'completion',
      raw: forwarded,
      body: { model },
      model,
      stream: false,
      estimatedPromptTokens: Math.ceil(raw.length / 4),
      maxTokens: 1,
    },
    answer: own && (() => answer(own)),
  };
}

/** vLLM answers a body without `model` for its one served model; a fleet of one model can do the same. */
function onlyOne(models: ReadonlySet<string>): string | undefined {
  return models.size === 1 ? [...models][0] : undefined;
}

function optBool(b: Obj, name: string, fallback: boolean): boolean {
  const v = b[name];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean') throw badRequest(`'${name}' must be a boolean`, name, 'invalid_type');
  return v;
}

/**
 * vLLM's two tokenize forms: `TokenizeChatRequest` when `messages` is present
 * (add_generation_prompt true, continue_final_message false, add_special_tokens
 * false: the template wrote them), else `TokenizeCompletionRequest`
 * (add_special_tokens true). Both take return_token_strs (false).
 */
function checkTokenize(b: Obj): (own: LocalTokenizer) => Promise<Obj | undefined> {
  const strs = optBool(b, 'return_token_strs', false);
  const respond = (own: LocalTokenizer, tokens: number[]): Obj => ({
    count: tokens.length,
    max_model_len: own.maxModelLen,
    tokens,
    token_strs: strs ? own.tokenizer.tokenStrs(tokens) : null,
  });
  if (b.messages === undefined || b.messages === null) {
    if (typeof b.prompt !== 'string')
      throw badRequest(`'prompt' (a string) or 'messages' (a list) is required`, 'prompt', 'invalid_type');
    const prompt = b.prompt;
    const special = optBool(b, 'add_special_tokens', true);
    return async (own) => respond(own, await own.tokenizer.tokenizeCompletion(prompt, special));
  }
  if (!Array.isArray(b.messages)) throw badRequest(`'messages' must be a list`, 'messages', 'invalid_type');
  const messages = b.messages as unknown[];
  const addGenerationPrompt = optBool(b, 'add_generation_prompt', true);
  const continueFinalMessage = optBool(b, 'continue_final_message', false);
  if (addGenerationPrompt && continueFinalMessage)
    throw badRequest(
      'Cannot set both `continue_final_message` and `add_generation_prompt` to True.',
      'continue_final_message',
    );
  const addSpecialTokens = optBool(b, 'add_special_tokens', false);
  if (b.tools !== undefined && b.tools !== null && !Array.isArray(b.tools))
    throw badRequest(`'tools' must be a list`, 'tools', 'invalid_type');
  const kwargs = b.chat_template_kwargs;
  if (kwargs !== undefined && kwargs !== null && (typeof kwargs !== 'object' || Array.isArray(kwargs)))
    throw badRequest(`'chat_template_kwargs' must be an object`, 'chat_template_kwargs', 'invalid_type');
  // A per-request template is the server's to allow or refuse (--trust-request-chat-template).
  const ownTemplate = b.chat_template !== undefined && b.chat_template !== null;
  return async (own) => {
    if (ownTemplate || !own.tokenizer.hasChatTemplate) return undefined;
    try {
      const tokens = await own.tokenizer.tokenizeChat(messages, {
        tools: (b.tools as unknown[] | null | undefined) ?? undefined,
        templateKwargs: (kwargs as Obj | null | undefined) ?? undefined,
        addGenerationPrompt,
        continueFinalMessage,
        addSpecialTokens,
      });
      return respond(own, tokens);
    } catch (err) {
      // Media, or messages the template cannot take as the engine would: the engine's own answer is the one.
      if (err instanceof UnsupportedPromptError) return undefined;
      throw err;
    }
  };
}

/** vLLM's `DetokenizeRequest`: `tokens`, a list of ids; the answer is `{prompt}`, special tokens kept. */
function checkDetokenize(b: Obj): (own: LocalTokenizer) => Promise<Obj | undefined> {
  const tokens = b.tokens;
  if (!Array.isArray(tokens)) throw badRequest(`'tokens' must be a list of token ids`, 'tokens', 'invalid_type');
  tokens.forEach((t, i) => {
    if (typeof t !== 'number' || !Number.isInteger(t) || t < 0)
      throw badRequest(`'tokens[${i}]' must be a non-negative integer`, 'tokens', 'invalid_type');
  });
  const ids = tokens as number[];
  return async (own) => {
    const vocab = own.tokenizer.vocabSize;
    const bad = ids.findIndex((t) => t >= vocab);
    if (bad !== -1)
      throw badRequest(`token id ${ids[bad]} is out of vocabulary (0..${vocab - 1})`, 'tokens', 'invalid_value');
    return { prompt: await own.tokenizer.decode(ids) };
  };
}
