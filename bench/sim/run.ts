import type { ServerResponse } from 'node:http';
import type { FinishReason } from './scheduler.js';
import type { SimRequest } from './sim-request.js';
import type { SimServerDeps } from './server.js';

export interface RunHooks {
  /** Text of tokens `from..index` at the stream interval, as chat streaming groups them. */
  piece?: ((text: string, index: number, last: boolean) => void) | undefined;
  /** `text` is the whole output; `req` carries prompt, cached and output token counts. */
  done(req: SimRequest, reason: 'length' | 'stop', text: string): void;
  /** The engine failed the request (e.g. it could never fit). */
  failed(message: string): void;
}

/**
 * Runs one generation on the simulated engine for routes whose wire format is
 * not chat or completions (Responses, Messages, pooling): the scheduler, the
 * stream interval and the abort-on-disconnect are those of `generate` in server.ts.
 */
export function runGeneration(
  d: SimServerDeps,
  res: ServerResponse,
  id: string,
  promptTokens: number[],
  maxTokens: number,
  finishReason: 'length' | 'stop',
  hooks: RunHooks,
): void {
  const started = performance.now();
  const tok = d.ctx.tokenizer;
  const all: string[] = [];
  let pending: string[] = [];
  const last = maxTokens - 1;
  const simReq = d.scheduler.add({
    id,
    promptTokens,
    maxTokens,
    finishReason,
    outputToken: (i) => tok.outputToken(i),
    onToken(_token, index) {
      if (index === 0) d.metrics.observeFirstToken((performance.now() - started) / 1000, d.rank);
      const text = tok.outputText(index);
      all.push(text);
      if (!hooks.piece || res.destroyed) return;
      pending.push(text);
      if (index !== 0 && index !== last && pending.length < d.ctx.streamInterval) return;
      const joined = pending.join('');
      pending = [];
      hooks.piece(joined, index, index === last);
    },
    onFinish(reason: FinishReason, message?: string) {
      if (reason === 'abort') {
        if (!res.writableEnded) res.destroy();
        return;
      }
      d.metrics.observeFinished((performance.now() - started) / 1000, reason, d.rank);
      if (reason === 'error') return hooks.failed(message ?? 'request failed');
      hooks.done(simReq, reason, all.join(''));
    },
  });
  res.on('close', () => {
    if (!res.writableFinished) d.scheduler.abort(simReq);
  });
}

/** One server-sent event with its `event:` line, as vLLM frames Responses and Messages streams. */
export function sendEvent(res: ServerResponse, type: string, data: unknown): void {
  if (!res.destroyed) res.write(`event: ${type}\ndata: ${JSON.stringify(data)}\n\n`);
}

export function startStream(res: ServerResponse, headers: Record<string, string>): void {
  res.writeHead(200, { ...headers, 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
  res.flushHeaders();
}
