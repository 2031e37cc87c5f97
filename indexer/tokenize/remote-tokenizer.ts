import { LRUCache } from 'lru-cache';
import { request, type Dispatcher } from 'undici';
import xxhash from 'xxhash-wasm';

export interface RemoteTokenizerOptions {
  /** Base URL of a worker (`http://host:port`), or a function picking one per call (undefined: none available). */
  baseUrl: string | (() => string | undefined);
  /** Whole-call deadline (connect, send, answer), default 2000 ms. */
  timeoutMs?: number;
  /** Upper bound on the result cache, in bytes of token ids plus overhead. Default 16 MiB. */
  cacheBytes?: number;
  /** undici dispatcher (connection pool) to use; the global one by default. */
  dispatcher?: Dispatcher;
}

export interface RemoteTokenizerStats {
  hits: number;
  misses: number;
  cacheBytes: number;
  cacheEntries: number;
}

/** vLLM /tokenize chat form, minus `model` (added per call). */
export interface RemoteChatRequest {
  messages: unknown[];
  add_generation_prompt?: boolean;
  continue_final_message?: boolean;
  add_special_tokens?: boolean;
  tools?: unknown[];
  chat_template?: string;
  chat_template_kwargs?: Record<string, unknown>;
}

/** A /tokenize call that failed: unreachable worker, timeout, HTTP error or a malformed answer. */
export class RemoteTokenizeError extends Error {
  override name = 'RemoteTokenizeError';
  readonly status: number | undefined;

  constructor(message: string, status?: number) {
    super(message);
    this.status = status;
  }
}

const DEFAULT_TIMEOUT_MS = 2000;
const DEFAULT_CACHE_BYTES = 16 * 1024 * 1024;
const ENTRY_OVERHEAD = 96;
const MAX_ERROR_BODY = 4096;

/**
 * Asks a worker's `POST /tokenize` for the token ids, which is exact by
 * construction (the engine's own template and tokenizer) at the cost of a hop.
 * Results are cached per request: the key is xxh64 of the JSON body we send
 * plus its length, so a 100 KB prompt costs its token ids, not its
 * text. Two different bodies sharing a 64-bit hash and length would share a
 * result; that can only mis-route a request, never change what the engine runs.
 */
export class RemoteTokenizer {
  readonly #options: RemoteTokenizerOptions;
  readonly #hash: (s: string) => string;
  readonly #cache: LRUCache<string, Uint32Array>;
  readonly #inflight = new Map<string, Promise<Uint32Array>>();
  #hits = 0;
  #misses = 0;

  private constructor(options: RemoteTokenizerOptions, hash: (s: string) => string) {
    this.#options = options;
    this.#hash = hash;
    this.#cache = new LRUCache<string, Uint32Array>({
      maxSize: options.cacheBytes ?? DEFAULT_CACHE_BYTES,
      sizeCalculation: (ids) => ids.byteLength + ENTRY_OVERHEAD,
    });
  }

  static async create(options: RemoteTokenizerOptions): Promise<RemoteTokenizer> {
    // eslint-disable-next-line @typescript-eslint/unbound-method -- xxhash-wasm's functions are closures, not methods
    const { h64ToString } = await xxhash();
    return new RemoteTokenizer(options, (s) => h64ToString(s));
  }

  /** Completion form: `{model, prompt, add_special_tokens}`. */
  tokenizeCompletion(model: string, prompt: string, addSpecialTokens = true): Promise<number[]> {
    return this.tokenize({ model, prompt, add_special_tokens: addSpecialTokens });
  }

  /** Chat form: `{model, messages, add_generation_prompt: true, ...}`; undefined fields are left out. */
  tokenizeChat(model: string, chat: RemoteChatRequest): Promise<number[]> {
    return this.tokenize({ model, add_generation_prompt: true, ...chat });
  }

  /** Sends any /tokenize body (cached by its JSON text). */
  async tokenize(body: Record<string, unknown>): Promise<number[]> {
    // Key order is NOT normalised: templates print tool schemas and arguments with
    // `tojson`, so two bodies differing only in key order can differ in tokens.
    const json = JSON.stringify(body);
    const key = `${this.#hash(json)}:${json.length}`;
    const cached = this.#cache.get(key);
    if (cached) {
      this.#hits += 1;
      return Array.from(cached);
    }
    this.#misses += 1;
    let pending = this.#inflight.get(key);
    if (!pending) {
      pending = this.#call(json)
        .then((ids) => {
          this.#cache.set(key, ids);
          return ids;
        })
        .finally(() => this.#inflight.delete(key));
      this.#inflight.set(key, pending);
    }
    return Array.from(await pending);
  }

  stats(): RemoteTokenizerStats {
    return {
      hits: this.#hits,
      misses: this.#misses,
      cacheBytes: this.#cache.calculatedSize,
      cacheEntries: this.#cache.size,
    };
  }

  async #call(json: string): Promise<Uint32Array> {
    const base = typeof this.#options.baseUrl === 'function' ? this.#options.baseUrl() : this.#options.baseUrl;
    if (!base) throw new RemoteTokenizeError('remote tokenize: no worker available to ask');
    const url = `${base.replace(/\/+$/, '')}/tokenize`;
    const timeoutMs = this.#options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    let response: Dispatcher.ResponseData;
    let text: string;
    try {
      response = await request(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: json,
        signal: AbortSignal.timeout(timeoutMs),
        ...(this.#options.dispatcher ? { dispatcher: this.#options.dispatcher } : {}),
      });
      text = await response.body.text();
    } catch (err) {
      const e = err as Error;
      const reason =
        e.name === 'TimeoutError' || e.name === 'AbortError' ? `timed out after ${timeoutMs} ms` : e.message;
      throw new RemoteTokenizeError(`remote tokenize: POST ${url}: ${reason}`);
    }
    if (response.statusCode !== 200) {
      throw new RemoteTokenizeError(
        `remote tokenize: POST ${url}: HTTP ${response.statusCode}: ${errorMessage(text)}`,
        response.statusCode,
      );
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new RemoteTokenizeError(`remote tokenize: POST ${url}: answer is not JSON`, response.statusCode);
    }
    const tokens = (parsed as { tokens?: unknown } | null)?.tokens;
    if (!Array.isArray(tokens) || !tokens.every((t) => Number.isInteger(t) && t >= 0 && t <= 0xffffffff)) {
      throw new RemoteTokenizeError(
        `remote tokenize: POST ${url}: answer has no "tokens" array of token ids`,
        response.statusCode,
      );
    }
    return Uint32Array.from(tokens as number[]);
  }
}

/** vLLM answers `{"error": {"message"}}` (newer) or `{"message"}` (older); fall back to the raw text. */
function errorMessage(text: string): string {
  try {
    const body = JSON.parse(text) as { error?: { message?: unknown }; message?: unknown };
    const message = body.error?.message ?? body.message;
    if (typeof message === 'string') return message;
  } catch {
    // not JSON: show the text itself
  }
  return text.slice(0, MAX_ERROR_BODY) || '(empty body)';
}
