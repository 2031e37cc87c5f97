import type { PrefetchConfig, ToolRetentionConfig } from './config.js';

/** What a retainer needs of a worker. */
export interface RetainTarget {
  readonly id: string;
  readonly url: string;
  /** The data-parallel rank that served the turn: its prefix cache is that rank's. */
  readonly dataParallelRank?: number | undefined;
}

/** The tool-call turn whose prefix should survive the tool call. */
export interface RetainRequest {
  readonly model: string;
  /** The chat request body of the turn that ended in tool calls. */
  readonly body: Record<string, unknown>;
}

/** What a warm-up found: the prompt's tokens and how many of them the engine already held (GPU or CPU tier). */
export interface PrefetchResult {
  readonly promptTokens: number;
  readonly cachedTokens: number;
}

/**
 * The one engine-specific piece of tool-call retention: protect a turn's
 * prefix on a worker for a while, and bring it back into GPU memory before
 * the follow-up. A fleet whose engine offers nothing uses `noRetainer` and
 * keeps routing affinity, tier crediting and the warm-up prefetch, so it loses nothing.
 */
export interface KvRetainer {
  readonly name: string;
  /** Resolves to the tokens the engine now protects (0: none); rejects on an engine error. */
  retain(worker: RetainTarget, req: RetainRequest, keepMs: number): Promise<number>;
  /** Lets go of what `retain` protects (the follow-up came, or the session ended). Absent: the keep time runs out. */
  release?(worker: RetainTarget, req: RetainRequest): Promise<void>;
  /** Brings the turn's prefix back into GPU memory; rejects on an engine error. Absent: no prefetch. */
  prefetch?(worker: RetainTarget, req: RetainRequest, config: PrefetchConfig): Promise<PrefetchResult>;
}

const DROPPED = new Set([
  'stream',
  'stream_options',
  'n',
  'best_of',
  'logprobs',
  'top_logprobs',
  'max_completion_tokens',
]);

/**
 * The engine-neutral prefetch: the turn's own prompt again, non-streamed,
 * one output token. The engine looks its prefix up like any request's, loads
 * what its CPU tier holds back into GPU memory, recomputes the rest, and
 * leaves it all in its GPU prefix cache for the follow-up. The same messages
 * and tools render the same prompt tokens, so the follow-up (that prompt
 * plus the tool call and its result) hits every one of its blocks.
 */
export async function warmUp(
  worker: RetainTarget,
  req: RetainRequest,
  config: Pick<PrefetchConfig, 'timeoutMs' | 'priority'>,
): Promise<PrefetchResult> {
  const body: Record<string, unknown> = { model: req.model, max_tokens: 1 };
  for (const [k, v] of Object.entries(req.body))
    if (!DROPPED.has(k) && k !== 'max_tokens' && k !== 'model') body[k] = v;
  if (config.priority !== undefined) body.priority = config.priority;
  const res = await fetch(`${worker.url}/v1/chat/completions`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'x-kvgate-prefetch': '1',
      ...(worker.dataParallelRank !== undefined ? { 'x-data-parallel-rank': String(worker.dataParallelRank) } : {}),
    },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(config.timeoutMs),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${worker.url} answered the warm-up with ${res.status}: ${text.slice(0, 200)}`);
  const usage = (
    JSON.parse(text) as { usage?: { prompt_tokens?: unknown; prompt_tokens_details?: { cached_tokens?: unknown } } }
  ).usage;
  const promptTokens = typeof usage?.prompt_tokens === 'number' ? usage.prompt_tokens : 0;
  const cached = usage?.prompt_tokens_details?.cached_tokens;
  return { promptTokens, cachedTokens: typeof cached === 'number' ? cached : 0 };
}

export const noRetainer: KvRetainer = { name: 'none', retain: () => Promise.resolve(0), prefetch: warmUp };

async function postJson(url: string, body: unknown, timeoutMs: number): Promise<Record<string, unknown>> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${url} answered ${res.status}: ${text.slice(0, 200)}`);
  return JSON.parse(text) as Record<string, unknown>;
}

/**
 * LMCache's controller (`lmcache_controller`): `POST /pin {tokens, instance_id,
 * location}` keeps the KV chunks of those tokens from being evicted on that
 * instance's storage location. LMCache keys chunks by tokens, so the turn's
 * prompt is tokenized first by the worker itself (vLLM's `POST /tokenize` with
 * the same messages and tools), which renders the chat template exactly as the
 * engine did. `ttl_s` bounds the pin by the predicted return (the simulator
 * honours it; a controller without TTLs keeps the pin until its LRU policy
 * or an explicit unpin, so the keep time there is an upper bound we ask for).
 * instance_id is the worker id (configure LMCache's `lmcache_instance_id` to match).
 */
export function lmcacheRetainer(
  config: Pick<ToolRetentionConfig, 'controllerUrl' | 'location' | 'timeoutMs'>,
): KvRetainer {
  const pin = async (worker: RetainTarget, req: RetainRequest, ttlS: number): Promise<number> => {
    const b = req.body;
    const tok = await postJson(
      `${worker.url}/tokenize`,
      { model: req.model, messages: b.messages, ...(b.tools ? { tools: b.tools } : {}) },
      config.timeoutMs,
    );
    const tokens = tok.tokens;
    if (!Array.isArray(tokens)) throw new Error(`${worker.url}/tokenize gave no tokens`);
    const base = (config.controllerUrl ?? worker.url).replace(/\/$/, '');
    const pinned = await postJson(
      `${base}/pin`,
      { tokens, instance_id: worker.id, location: config.location, ttl_s: ttlS },
      config.timeoutMs,
    );
    return typeof pinned.num_tokens === 'number' ? pinned.num_tokens : 0;
  };
  return {
    name: 'lmcache',
    // LMCache's controller moves nothing into GPU memory; its engine loads a hit on the next request, the warm-up.
    prefetch: warmUp,
    retain: (worker, req, keepMs) => pin(worker, req, keepMs / 1000),
    // A pin held past the follow-up only crowds the host pool (pinned chunks are not evictable): LMCache's pin
    // sets the TTL, and its unpin is not implemented yet, so a pin that expires at once lets go.
    release: async (worker, req) => void (await pin(worker, req, RELEASE_TTL_S)),
  };
}

/** The TTL a release sets: expired on the engine's next look. */
const RELEASE_TTL_S = 0.001;

export function createRetainer(config: ToolRetentionConfig): KvRetainer {
  return config.engine === 'lmcache' ? lmcacheRetainer(config) : noRetainer;
}
