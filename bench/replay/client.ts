import { Pool } from 'undici';
import { blockTokens, TRACE_BLOCK_TOKENS, type TraceRequest } from './trace.js';

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
}

export interface LoadOptions {
  url: string;
  model: string;
  trace: readonly TraceRequest[];
  /** Arrival times are divided by this. */
  speedup: number;
  connections?: number;
  /** Called with the finished count every `progressMs`, and once at the end. */
  onProgress?: (p: Progress) => void;
  progressMs?: number;
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

/** The request body, built as a string: JSON.stringify of a 100k-element array would double the client's cost. */
export function requestBody(req: TraceRequest, model: string): string {
  const parts: string[] = [];
  const block: number[] = [];
  for (let j = 0; j < req.hashIds.length; j++) {
    block.length = 0;
    blockTokens(req.hashIds[j]!, block, Math.min(TRACE_BLOCK_TOKENS, req.inputLength - j * TRACE_BLOCK_TOKENS));
    parts.push(block.join(','));
  }
  return `{"model":${JSON.stringify(model)},"prompt":[${parts.join(',')}],"max_tokens":${Math.max(1, req.outputLength)},"stream":true,"stream_options":{"include_usage":true}}`;
}

/**
 * Streams one completion and reads the SSE events as they come: the first
 * event with a non-empty `choices` is the first token; the usage event gives
 * the token counts; `[DONE]` ends it. Anything else (an error event, a cut
 * stream, a non-200) is a failure.
 */
async function one(pool: Pool, req: TraceRequest, index: number, model: string, lateMs: number): Promise<RequestResult> {
  const start = performance.now();
  const r: RequestResult = { index, ok: false, lateMs, ttftMs: NaN, e2eMs: NaN, outputTokens: 0, promptTokens: req.inputLength, cachedTokens: 0 };
  try {
    const res = await pool.request({ path: '/v1/completions', method: 'POST', headers: { 'content-type': 'application/json' }, body: requestBody(req, model) });
    const worker = res.headers['x-kvgate-worker'];
    if (typeof worker === 'string') r.worker = worker;
    if (res.statusCode !== 200) {
      r.error = `HTTP ${res.statusCode}: ${(await res.body.text()).slice(0, 200)}`;
      return r;
    }
    res.body.setEncoding('utf8');
    let buf = '';
    let done = false;
    for await (const chunk of res.body as AsyncIterable<string>) {
      buf += chunk;
      let cut: number;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        if (!event.startsWith('data: ')) continue;
        if (event === 'data: [DONE]') {
          done = true;
        } else if (event.includes('"error":')) {
          r.error = event.slice(6, 206);
        } else if (Number.isNaN(r.ttftMs) && event.includes('"choices":[{')) {
          r.ttftMs = performance.now() - start;
        } else if (event.includes('"usage":{')) {
          const u = (JSON.parse(event.slice(6)) as { usage: { prompt_tokens: number; completion_tokens: number; prompt_tokens_details?: { cached_tokens?: number } } }).usage;
          r.outputTokens = u.completion_tokens;
          r.promptTokens = u.prompt_tokens;
          r.cachedTokens = u.prompt_tokens_details?.cached_tokens ?? 0;
        }
      }
    }
    r.e2eMs = performance.now() - start;
    if (!r.error && !done) r.error = 'stream ended without [DONE]';
    if (!r.error && Number.isNaN(r.ttftMs)) r.error = 'no token received';
    r.ok = !r.error;
  } catch (err) {
    r.error = (err as Error).message;
  }
  return r;
}

/**
 * Open-loop replay: request i is sent at `timestamp_i / speedup` after the
 * start whatever happened to earlier ones, as real users would. Lateness is
 * recorded per request so that a client (or machine) too slow for the
 * speed-up shows up in the results rather than as invented queueing.
 */
export async function replay(opts: LoadOptions): Promise<RequestResult[]> {
  const { trace, speedup } = opts;
  const pool = new Pool(opts.url, { connections: opts.connections ?? 4096, pipelining: 1, headersTimeout: 0, bodyTimeout: 0, keepAliveTimeout: 60_000 });
  const results: RequestResult[] = new Array(trace.length);
  const t0 = performance.now();
  const first = trace[0]?.timestamp ?? 0;
  let done = 0, failed = 0, sent = 0;
  let lastDone = 0, lastAt = t0, lateSum = 0, lateCount = 0;
  const report = () => {
    const now = performance.now();
    opts.onProgress?.({
      done, total: trace.length, inflight: sent - done, failed, elapsedMs: now - t0,
      rate: ((done - lastDone) * 1000) / Math.max(1, now - lastAt), lateMs: lateCount ? lateSum / lateCount : 0,
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
      pending.push(one(pool, trace[i]!, i, opts.model, late).then((r) => {
        results[i] = r;
        done++;
        if (!r.ok) failed++;
      }));
    }
    await Promise.all(pending);
  } finally {
    clearInterval(timer);
    report();
    await pool.close();
  }
  return results;
}
