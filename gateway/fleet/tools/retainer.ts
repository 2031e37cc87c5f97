import type { ToolRetentionConfig } from './config.js';

/** What a retainer needs of a worker. */
export interface RetainTarget {
  readonly id: string;
  readonly url: string;
}

/** The tool-call turn whose prefix should survive the tool call. */
export interface RetainRequest {
  readonly model: string;
  /** The chat request body of the turn that ended in tool calls. */
  readonly body: Record<string, unknown>;
}

/**
 * The one engine-specific piece of tool-call retention: protect a turn's
 * prefix on a worker for a while. A fleet whose engine offers nothing uses
 * `noRetainer` and keeps routing affinity and tier crediting, so it loses nothing.
 */
export interface KvRetainer {
  readonly name: string;
  /** Resolves to the tokens the engine now protects (0: none); rejects on an engine error. */
  retain(worker: RetainTarget, req: RetainRequest, keepMs: number): Promise<number>;
}

export const noRetainer: KvRetainer = { name: 'none', retain: () => Promise.resolve(0) };

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
  return {
    name: 'lmcache',
    async retain(worker, req, keepMs) {
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
        { tokens, instance_id: worker.id, location: config.location, ttl_s: keepMs / 1000 },
        config.timeoutMs,
      );
      return typeof pinned.num_tokens === 'number' ? pinned.num_tokens : 0;
    },
  };
}

export function createRetainer(config: ToolRetentionConfig): KvRetainer {
  return config.engine === 'lmcache' ? lmcacheRetainer(config) : noRetainer;
}
