import { LRUCache } from 'lru-cache';
import { Pool } from 'undici';
import { blockTokens, PROMPT_VOCAB, TRACE_BLOCK_TOKENS, type TraceRequest } from './trace.js';

/** What the client saw of one request. Times are real milliseconds (not scaled by the speed-up). */
export interface RequestResult {
  index: number;
  ok: boolean;
  error?: string;
  /** Send time minus scheduled time: how far the client fell behind the trace. */
  lateMs: number;
  /** Until the first SSE data event carrying a token. */
  ttftMs: number;
  e2eMs: number;
  outputTokens: number;
  promptTokens: number;
  cachedTokens: number;
  worker?: string;
  /** Prompt blocks the gateway expected the worker to hold (`x-kvgate-cached-blocks`), when it said. */
  predictedCachedBlocks?: number;
  /** What flow control did (`x-kvgate-flow`), when it is on. */
  flow?: string;
  /** The HTTP status (429: shed by the gateway's flow control). */
  status?: number;
}

export interface LoadOptions {
  url: string;
  model: string;
  trace: readonly TraceRequest[];
  /** Arrival times are divided by this. */
  speedup: number;
  connections?: number | undefined;
  /** Called with the finished count every `progressMs`, and once at the end. */
  onProgress?: ((p: Progress) => void) | undefined;
  progressMs?: number | undefined;
  /** Extra request headers per trace index (the multi-tenant bench: tenant and priority class). */
  headers?: ((index: number) => Record<string, string>) | undefined;
}

export interface Progress {
  done: number;
  total: number;
  inflight: number;
  failed: number;
  elapsedMs: number;
  /** Requests finished per second over the last interval. */
  rate: number;
  /** Mean lateness of the requests sent in the last interval. */
  lateMs: number;
}

/** Token ids of recently used blocks as JSON text: conversations resend their history, so most blocks repeat. */
const blockText = new LRUCache<number, string>({ max: 20_000 });

let idText: string[] | undefined;

/** `ids.join(',')` without converting numbers to text each time (most of the client's CPU otherwise). */
function joinIds(ids: readonly number[]): string {
  idText ??= Array.from({ length: PROMPT_VOCAB }, (_, i) => String(i));
  const parts = new Array<string>(ids.length);
  for (let i = 0; i < ids.length; i++) parts[i] = idText[ids[i]!]!;
  return parts.join(',');
}

function blockJson(id: number, length: number): string {
  if (length < TRACE_BLOCK_TOKENS) return joinIds(blockTokens(id, [], length));
  let text = blockText.get(id);
  if (text === undefined) {
    text = joinIds(blockTokens(id));
    blockText.set(id, text);
  }
  return text;
}

/** The request body, built as a string: JSON.stringify of a 100k-element array would double the client's cost. */
export function requestBody(req: TraceRequest, model: string): string {
  const parts: string[] = [];
  for (let j = 0; j < req.hashIds.length; j++) {
    parts.push(blockJson(req.hashIds[j]!, Math.min(TRACE_BLOCK_TOKENS, req.inputLength - j * TRACE_BLOCK_TOKENS)));
  }
  return `{"model":${JSON.stringify(model)},"prompt":[${parts.join(',')}],"max_tokens":${Math.max(1, req.outputLength)},"stream":true,"stream_options":{"include_usage":true}}`;
}

/** The usage event's counts, read from the end of an SSE stream (the event just before `[DONE]`). */
export function readStreamEnd(tail: string): {
  done: boolean;
  error?: string;
  usage?: { prompt_tokens: number; completion_tokens: number; prompt_tokens_details?: { cached_tokens?: number } };
} {
  const done = tail.endsWith('data: [DONE]\n\n');
  const err = tail.indexOf('{"error":');
  if (err >= 0) return { done, error: tail.slice(err, err + 200) };
  const u = tail.lastIndexOf('"usage":{');
  if (u < 0) return { done };
  const start = tail.lastIndexOf('data: ', u) + 6;
  const end = tail.indexOf('\n\n', u);
  try {
    return {
      done,
      usage: (
        JSON.parse(tail.slice(start, end < 0 ? undefined : end)) as {
          usage: NonNullable<ReturnType<typeof readStreamEnd>['usage']>;
        }
      ).usage,
    };
  } catch {
    return { done };
  }
}

const TOKEN_EVENT = '"choices":[{';
const TAIL = 4096;

/**
 * Streams one completion through undici's raw dispatch (no stream objects per
 * request: the client must stay cheap next to the fleet it drives). The first
 * chunk holding an event with a non-empty `choices` is the first token; only
 * the last few KB are kept, to read the usage event and `[DONE]` at the end.
 */
function one(
  pool: Pool,
  req: TraceRequest,
  index: number,
  model: string,
  lateMs: number,
  extraHeaders: Record<string, string> = {},
): Promise<RequestResult> {
  const start = performance.now();
  const r: RequestResult = {
    index,
    ok: false,
    lateMs,
    ttftMs: NaN,
    e2eMs: NaN,
    outputTokens: 0,
    promptTokens: req.inputLength,
    cachedTokens: 0,
  };
  return new Promise((resolve) => {
    let status = 0;
    let tail = '';
    const finish = (error?: string) => {
      r.e2eMs = performance.now() - start;
      if (!error && status === 200) {
        const end = readStreamEnd(tail);
        if (end.usage) {
          r.outputTokens = end.usage.completion_tokens;
          r.promptTokens = end.usage.prompt_tokens;
          r.cachedTokens = end.usage.prompt_tokens_details?.cached_tokens ?? 0;
        }
        error =
          end.error ??
          (!end.done ? 'stream ended without [DONE]' : Number.isNaN(r.ttftMs) ? 'no token received' : undefined);
      } else if (!error) {
        error = `HTTP ${status}: ${tail.slice(0, 200)}`;
      }
      if (error) r.error = error;
      r.ok = !error;
      resolve(r);
    };
    pool.dispatch(
      {
        path: '/v1/completions',
        method: 'POST',
        headers: { 'content-type': 'application/json', ...extraHeaders },
        body: requestBody(req, model),
      },
      {
        onRequestStart() {},
        onResponseStart(_c, statusCode, headers) {
          status = statusCode;
          r.status = statusCode;
          const worker = headers['x-kvgate-worker'];
          if (typeof worker === 'string') r.worker = worker;
          const predicted = headers['x-kvgate-cached-blocks'];
          if (typeof predicted === 'string') r.predictedCachedBlocks = Number(predicted);
          const flow = headers['x-kvgate-flow'];
          if (typeof flow === 'string') r.flow = flow;
        },
        onResponseData(_c, chunk) {
          const text = chunk.toString('utf8');
          if (Number.isNaN(r.ttftMs) && status === 200) {
            tail += text;
            if (tail.includes(TOKEN_EVENT)) r.ttftMs = performance.now() - start;
          } else {
            tail = tail.length + text.length > 2 * TAIL ? (tail + text).slice(-TAIL) : tail + text;
          }
        },
        onResponseEnd() {
          finish();
        },
        onResponseError(_c, err) {
          finish(err.message);
        },
      },
    );
  });
}

/**
 * Open-loop replay: request i is sent at `timestamp_i / speedup` after the
 * start whatever happened to earlier ones, as real users would. Lateness is
 * recorded per request so that a client (or machine) too slow for the
 * speed-up shows up in the results rather than as invented queueing.
 */
export async function replay(opts: LoadOptions): Promise<RequestResult[]> {
  const { trace, speedup } = opts;
  const pool = new Pool(opts.url, {
    connections: opts.connections ?? 4096,
    pipelining: 1,
    headersTimeout: 0,
    bodyTimeout: 0,
    keepAliveTimeout: 60_000,
  });
  const results = new Array<RequestResult>(trace.length);
  const t0 = performance.now();
  const first = trace[0]?.timestamp ?? 0;
  let done = 0,
    failed = 0,
    sent = 0;
  let lastDone = 0,
    lastAt = t0,
    lateSum = 0,
    lateCount = 0;
  const report = () => {
    const now = performance.now();
    opts.onProgress?.({
      done,
      total: trace.length,
      inflight: sent - done,
      failed,
      elapsedMs: now - t0,
      rate: ((done - lastDone) * 1000) / Math.max(1, now - lastAt),
      lateMs: lateCount ? lateSum / lateCount : 0,
    });
    lastDone = done;
    lastAt = now;
    lateSum = lateCount = 0;
  };
  const timer = setInterval(report, opts.progressMs ?? 5000);
  const pending: Promise<void>[] = [];
  try {
    for (let i = 0; i < trace.length; i++) {
      const due = t0 + (trace[i]!.timestamp - first) / speedup;
      const wait = due - performance.now();
      if (wait > 1) await new Promise((r) => setTimeout(r, wait));
      const late = Math.max(0, performance.now() - due);
      lateSum += late;
      lateCount++;
      sent++;
      pending.push(
        one(pool, trace[i]!, i, opts.model, late, opts.headers?.(i)).then((r) => {
          results[i] = r;
          done++;
          if (!r.ok) failed++;
        }),
      );
    }
    await Promise.all(pending);
  } finally {
    clearInterval(timer);
    report();
    await pool.close();
  }
  return results;
}
