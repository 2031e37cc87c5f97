import { LRUCache } from 'lru-cache';
import { z } from 'zod';
import {
  previousOutputMessages,
  responsesToChat,
  UnconvertiblePromptError,
  type ChatShape,
} from '../../../indexer/tokenize/responses-prompt.js';
import type { ResponseObserver } from '../../proxy/usage-sniffer.js';
import { badRequest, GatewayError } from '../errors.js';
import { MAX_ACCOUNTED_OUTPUT_TOKENS, type InferenceRequest } from '../request.js';
import { jsonObject, optionalType } from './body.js';

/** How many response ids the gateway remembers, and for how long (vLLM keeps them in the serving process). */
export const responsesConfigSchema = z.strictObject({
  maxStored: z.number().int().min(1).default(100_000),
  ttlMs: z
    .number()
    .int()
    .min(1000)
    .default(6 * 60 * 60 * 1000),
  /** Bytes of one answer read to learn its id and output; a longer answer is forwarded but not remembered. */
  maxCapturedBytes: z
    .number()
    .int()
    .min(1024)
    .default(4 * 1024 * 1024),
});
export type ResponsesConfig = z.infer<typeof responsesConfigSchema>;

type Obj = Record<string, unknown>;

/** A stored response: its worker, and the conversation the next turn's prompt starts with. */
export interface StoredResponse {
  readonly worker: string;
  /** Undefined when the turn's prompt could not be reproduced: the next turn is pinned but routed without blocks. */
  readonly messages: readonly Obj[] | undefined;
}

/**
 * Which worker stored which response, bounded and expiring. A request naming a
 * `previous_response_id` must reach that worker (the engine keeps the
 * conversation in its process) and its prompt begins with the stored messages,
 * so the gateway keeps those too, to hash the blocks the engine will look up.
 */
export class ResponseStore {
  readonly #cache: LRUCache<string, StoredResponse>;
  readonly config: ResponsesConfig;

  constructor(config: ResponsesConfig, now?: () => number) {
    this.config = config;
    this.#cache = new LRUCache<string, StoredResponse>({
      max: config.maxStored,
      ttl: config.ttlMs,
      // An injected clock must be read on every lookup, not cached for ttlResolution.
      ...(now ? { perf: { now }, ttlResolution: 0 } : {}),
    });
  }

  get(id: string): StoredResponse | undefined {
    return this.#cache.get(id);
  }

  set(id: string, stored: StoredResponse): void {
    this.#cache.set(id, stored);
  }

  delete(id: string): void {
    this.#cache.delete(id);
  }

  get size(): number {
    return this.#cache.size;
  }
}

export interface ResponsesRequest {
  readonly request: InferenceRequest;
  /** The worker that stored `previous_response_id`, when the gateway knows it. */
  readonly pinned: { readonly worker: string; readonly responseId: string } | undefined;
  /** The chat messages of this turn's prompt (undefined when they cannot be reproduced). */
  readonly messages: readonly Obj[] | undefined;
}

/**
 * Parses `POST /v1/responses`. The routed body is the chat request vLLM renders
 * (instructions, stored conversation, input items, tools), so KV-aware
 * strategies hash the engine's blocks; the raw body goes upstream unchanged.
 */
export function parseResponses(raw: Buffer, store: ResponseStore): ResponsesRequest {
  const b = jsonObject(raw);
  if (typeof b.model !== 'string' || b.model === '')
    throw badRequest(`'model' must be a non-empty string`, 'model', 'invalid_type');
  if (b.input === undefined || b.input === null)
    throw badRequest(`'input' is required`, 'input', 'missing_required_parameter');
  if (typeof b.input !== 'string' && !Array.isArray(b.input))
    throw badRequest(`'input' must be a string or an array of items`, 'input', 'invalid_type');
  optionalType(b, 'stream', 'boolean');
  optionalType(b, 'instructions', 'string');
  optionalType(b, 'tools', 'array');
  optionalType(b, 'previous_response_id', 'string');
  optionalType(b, 'max_output_tokens', 'number');
  let previous: StoredResponse | undefined;
  if (typeof b.previous_response_id === 'string') previous = store.get(b.previous_response_id);
  let chat: ChatShape | undefined;
  // Without the stored conversation the prompt's start is unknown: route by load and the rest, not by blocks.
  if (b.previous_response_id === undefined || b.previous_response_id === null || previous?.messages)
    chat = convert(() => responsesToChat(b, previous?.messages));
  const body: Obj = { model: b.model };
  if (chat) {
    body.messages = chat.messages;
    if (chat.tools) body.tools = chat.tools;
  }
  const max = typeof b.max_output_tokens === 'number' ? b.max_output_tokens : undefined;
  return {
    request: {
      kind: 'chat',
      raw,
      body,
      model: b.model,
      stream: b.stream === true,
      estimatedPromptTokens: Math.ceil(JSON.stringify(chat?.messages ?? b.input).length / 4),
      maxTokens: max === undefined ? undefined : Math.min(max, MAX_ACCOUNTED_OUTPUT_TOKENS),
    },
    pinned: previous && { worker: previous.worker, responseId: b.previous_response_id as string },
    messages: chat?.messages,
  };
}

/** The conversion, or undefined for shapes the gateway does not reproduce (the engine still judges them). */
export function convert(fn: () => ChatShape): ChatShape | undefined {
  try {
    return fn();
  } catch (err) {
    if (err instanceof UnconvertiblePromptError) return undefined;
    throw err;
  }
}

/** The 4xx for a `previous_response_id` whose worker left the fleet or is unhealthy. */
export function workerGone(id: string, worker: string, param: string | null): GatewayError {
  return new GatewayError(
    param ? 400 : 404,
    `response '${id}' is stored on worker '${worker}', which is not available now; start the conversation again with its full input`,
    param ? 'invalid_request_error' : 'not_found_error',
    'response_worker_unavailable',
    param,
  );
}

/**
 * Reads a Responses answer (JSON, or the SSE stream's final `response.*`
 * event) to learn the response id and its output text, then remembers the
 * worker and the conversation so far. Wraps the request's usual observer.
 */
export class ResponseRecorder implements ResponseObserver {
  worker = '';
  readonly #inner: ResponseObserver;
  readonly #store: ResponseStore;
  readonly #messages: readonly Obj[] | undefined;
  readonly #chunks: Buffer[] = [];
  #size = 0;

  constructor(inner: ResponseObserver, store: ResponseStore, messages: readonly Obj[] | undefined) {
    this.#inner = inner;
    this.#store = store;
    this.#messages = messages;
  }

  data(chunk: Buffer): void {
    this.#inner.data(chunk);
    this.#size += chunk.length;
    if (this.#size <= this.#store.config.maxCapturedBytes) this.#chunks.push(chunk);
  }

  end(status: number): void {
    this.#inner.end(status);
    if (status !== 200 || this.#size > this.#store.config.maxCapturedBytes || !this.worker) return;
    const response = finalResponse(Buffer.concat(this.#chunks).toString('utf8'));
    if (!response || typeof response.id !== 'string' || response.store === false) return;
    const messages = this.#messages && [...this.#messages, ...previousOutputMessages(response)];
    this.#store.set(response.id, { worker: this.worker, messages });
  }
}

/** The response object of a JSON body, or of the last `response.completed|incomplete|failed` SSE event. */
function finalResponse(text: string): Obj | undefined {
  const trimmed = text.trimStart();
  try {
    if (trimmed.startsWith('{')) return JSON.parse(trimmed) as Obj;
    let last: Obj | undefined;
    for (const line of text.split('\n')) {
      if (!line.startsWith('data:')) continue;
      const ev = JSON.parse(line.slice(5)) as Obj;
      if (typeof ev.type === 'string' && /^response\.(completed|incomplete|failed)$/.test(ev.type))
        last = ev.response as Obj;
    }
    return last;
  } catch {
    return undefined;
  }
}
