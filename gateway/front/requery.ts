import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import { z } from 'zod';
import { GatewayError, sendError } from './errors.js';
import type { Fleet, Worker } from '../fleet/fleet.js';
import type { Transport } from '../proxy/forward.js';
import { upstreamRequestHeaders } from '../proxy/headers.js';
import { ADMIN_TOKEN_HEADER } from '../routing/policies/overrides.js';
import type { GatewayMetrics } from '../ops/metrics.js';
import type { InferenceKind } from './request.js';

/**
 * Re-queries from the gateway (`server.requery`): a chat request carrying
 * `kvgate_requery: {rounds, prompt?}` is answered by `rounds` calls to one
 * worker, each extending the previous conversation with the previous answer
 * (assistant) and the reconsider prompt (user). Next to the cache, each round
 * pays prefill only for what the previous round added; from the client, each
 * round would be a new request that may land elsewhere. Off by default: it
 * multiplies what one request costs.
 */
export const requeryConfigSchema = z.strictObject({
  enabled: z.boolean().default(false),
  /** Most rounds one request may ask for. */
  maxRounds: z.number().int().min(1).max(64).default(8),
  /** The user message of rounds 2.. when the request gives none. */
  defaultPrompt: z.string().min(1).default('Reconsider your answer. Check it step by step and give your final answer.'),
});
export type RequeryConfig = z.infer<typeof requeryConfigSchema>;

export const REQUERY_FIELD = 'kvgate_requery';
export const REQUERY_ROUNDS_HEADER = 'x-kvgate-requery-rounds';

export interface RequeryAsk {
  rounds: number;
  prompt: string;
}

const bad = (message: string, code: string) =>
  new GatewayError(400, message, 'invalid_request_error', code, REQUERY_FIELD);

/** The request's re-query ask, or undefined when it has none; a 400 when it is malformed or not allowed. */
export function requeryAsk(
  body: Record<string, unknown>,
  kind: InferenceKind,
  config: RequeryConfig,
): RequeryAsk | undefined {
  const v = body[REQUERY_FIELD];
  if (v === undefined || v === null) return undefined;
  if (!config.enabled)
    throw bad(`'${REQUERY_FIELD}' is not enabled on this gateway (server.requery.enabled)`, 'requery_disabled');
  if (kind !== 'chat') throw bad(`'${REQUERY_FIELD}' is only supported on /v1/chat/completions`, 'unsupported_route');
  if (typeof v !== 'object' || Array.isArray(v))
    throw bad(`'${REQUERY_FIELD}' must be an object {"rounds": k, "prompt"?: "..."}`, 'invalid_type');
  const o = v as Record<string, unknown>;
  const rounds = o.rounds;
  if (typeof rounds !== 'number' || !Number.isInteger(rounds) || rounds < 1 || rounds > config.maxRounds)
    throw bad(`'${REQUERY_FIELD}.rounds' must be an integer from 1 to ${config.maxRounds}`, 'invalid_value');
  if (o.prompt !== undefined && (typeof o.prompt !== 'string' || o.prompt === ''))
    throw bad(`'${REQUERY_FIELD}.prompt' must be a non-empty string`, 'invalid_type');
  const unknown = Object.keys(o).filter((k) => k !== 'rounds' && k !== 'prompt');
  if (unknown.length > 0) throw bad(`'${REQUERY_FIELD}' has unknown keys: ${unknown.join(', ')}`, 'invalid_value');
  if (typeof body.n === 'number' && body.n !== 1)
    throw bad(`'${REQUERY_FIELD}' needs n = 1: each round extends one answer`, 'invalid_value');
  return { rounds, prompt: o.prompt ?? config.defaultPrompt };
}

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details?: { cached_tokens?: number } | null;
}

function addUsage(a: Usage | undefined, b: Usage | undefined): Usage | undefined {
  if (!a) return b;
  if (!b) return a;
  return {
    prompt_tokens: a.prompt_tokens + b.prompt_tokens,
    completion_tokens: a.completion_tokens + b.completion_tokens,
    total_tokens: a.total_tokens + b.total_tokens,
    prompt_tokens_details: {
      cached_tokens: (a.prompt_tokens_details?.cached_tokens ?? 0) + (b.prompt_tokens_details?.cached_tokens ?? 0),
    },
  };
}

export interface RequeryJob {
  ask: RequeryAsk;
  body: Record<string, unknown>;
  worker: Worker;
  strategy: string;
  route: string;
  path: string;
  requestId: string;
  headers: IncomingHttpHeaders;
  clientAddress: string | undefined;
  promptTokens: number;
  blockSize: number;
}

export interface RequeryDeps {
  readonly fleet: Fleet;
  readonly transport: Transport;
  readonly metrics: GatewayMetrics;
}

/** Runs the rounds on `job.worker` and answers `res`: the last round's response, its usage the sum of all rounds'. */
export async function runRequery(d: RequeryDeps, job: RequeryJob, res: ServerResponse): Promise<void> {
  const { ask, worker } = job;
  const { [REQUERY_FIELD]: _omit, ...base } = job.body;
  const clientStream = base.stream === true;
  const messages = [...(base.messages as unknown[])];
  const perRound: Usage[] = [];
  let sum: Usage | undefined;
  const respHeaders: Record<string, string> = {
    'x-kvgate-worker': worker.id,
    'x-kvgate-strategy': job.strategy,
    'x-request-id': job.requestId,
  };
  let status = 0;
  try {
    for (let round = 1; round <= ask.rounds; round++) {
      if (res.destroyed) return;
      const last = round === ask.rounds;
      const stream = last && clientStream;
      const body: Record<string, unknown> = { ...base, messages, stream };
      if (stream) body.stream_options = { ...(base.stream_options as object | undefined), include_usage: true };
      else delete body.stream_options;
      const text = JSON.stringify(body);
      const prompt = perRound.length
        ? perRound[perRound.length - 1]!.total_tokens + Math.ceil(ask.prompt.length / 4)
        : job.promptTokens;
      const ticket = d.fleet.start(worker, prompt, Math.ceil(prompt / job.blockSize));
      try {
        const headers = upstreamRequestHeaders(job.headers, job.requestId, Buffer.byteLength(text), {
          clientAddress: job.clientAddress,
          passAuthorization: d.transport.config.passClientAuthorization,
        });
        delete headers[ADMIN_TOKEN_HEADER];
        const { pool, basePath } = d.transport.get(worker);
        const up = await pool.request({ method: 'POST', path: basePath + job.path, headers, body: text });
        status = up.statusCode;
        if (up.statusCode >= 400) {
          // The engine's own error, as it gave it, with how far the rounds got.
          const errText = await up.body.text();
          res.writeHead(up.statusCode, {
            ...respHeaders,
            'content-type': 'application/json',
            [REQUERY_ROUNDS_HEADER]: String(round - 1),
          });
          res.end(errText);
          return;
        }
        respHeaders[REQUERY_ROUNDS_HEADER] = String(ask.rounds);
        if (stream) {
          d.fleet.firstToken(ticket);
          await relayStream(up.body, res, sum, respHeaders, base.stream_options);
          return;
        }
        const json = (await up.body.json()) as {
          choices?: { message?: { content?: unknown } }[];
          usage?: Usage;
        };
        if (json.usage) perRound.push(json.usage);
        sum = addUsage(sum, json.usage);
        if (last) {
          const out = JSON.stringify({
            ...json,
            usage: sum,
            [REQUERY_FIELD]: { rounds: ask.rounds, usage: perRound },
          });
          res.writeHead(200, {
            ...respHeaders,
            'content-type': 'application/json',
            'content-length': String(Buffer.byteLength(out)),
          });
          res.end(out);
          return;
        }
        const content = json.choices?.[0]?.message?.content;
        messages.push(
          { role: 'assistant', content: typeof content === 'string' ? content : '' },
          { role: 'user', content: ask.prompt },
        );
      } finally {
        d.fleet.finish(ticket);
      }
    }
  } catch (err) {
    if (!res.headersSent)
      sendError(
        res,
        new GatewayError(502, `re-query round failed: ${(err as Error).message}`, 'upstream_error', 'upstream_failed'),
        { 'x-request-id': job.requestId },
      );
    else res.destroy();
  } finally {
    d.metrics.request(job.route, worker.id, job.strategy, res.statusCode || status || 502);
  }
}

/** The last round's SSE stream, with the usage chunk carrying the sum of all rounds (dropped if the client did not ask for usage). */
async function relayStream(
  body: AsyncIterable<Buffer>,
  res: ServerResponse,
  prior: Usage | undefined,
  headers: Record<string, string>,
  clientOptions: unknown,
): Promise<void> {
  const wantsUsage = (clientOptions as { include_usage?: unknown } | undefined)?.include_usage === true;
  res.writeHead(200, { ...headers, 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  let pending = '';
  const emit = (event: string) => {
    const line = event.startsWith('data: ') ? event.slice(6) : undefined;
    if (line !== undefined && line !== '[DONE]') {
      try {
        const chunk = JSON.parse(line) as { usage?: Usage | null | undefined; choices?: unknown[] };
        if (chunk.usage) {
          if (!wantsUsage && (chunk.choices?.length ?? 0) === 0) return;
          if (!wantsUsage) delete chunk.usage;
          else chunk.usage = addUsage(prior, chunk.usage);
          res.write(`data: ${JSON.stringify(chunk)}\n\n`);
          return;
        }
      } catch {
        // Not JSON: pass it on unchanged.
      }
    }
    res.write(`${event}\n\n`);
  };
  for await (const buf of body) {
    pending += buf.toString('utf8');
    let i: number;
    while ((i = pending.indexOf('\n\n')) !== -1) {
      emit(pending.slice(0, i));
      pending = pending.slice(i + 2);
    }
  }
  if (pending.trim()) emit(pending);
  res.end();
}
