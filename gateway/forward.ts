import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { Pool, type Dispatcher } from 'undici';
import { z } from 'zod';
import { GatewayError, sendError } from './errors.js';
import type { Fleet, LoadTicket, Worker } from './fleet.js';
import { clientResponseHeaders } from './headers.js';
import type { GatewayMetrics } from './metrics.js';

/**
 * Upstream connection settings. Generations can take minutes before the first
 * byte (long prompts, queues) and between chunks, so the defaults never cut a
 * healthy generation short: 10 min to first header, no body idle limit.
 */
export const upstreamConfigSchema = z.strictObject({
  headersTimeoutMs: z.number().int().min(0).default(600_000),
  /** Longest silence between two body chunks; 0 disables it. */
  bodyTimeoutMs: z.number().int().min(0).default(0),
  connectTimeoutMs: z.number().int().min(1).default(10_000),
  keepAliveTimeoutMs: z.number().int().min(1).default(60_000),
  /** Connections per worker; unset means unlimited. */
  connections: z.number().int().min(1).optional(),
});
export type UpstreamConfig = z.infer<typeof upstreamConfigSchema>;

/** One keep-alive undici `Pool` per worker. */
export class Transport {
  readonly #pools = new Map<string, { pool: Pool; basePath: string }>();

  constructor(workers: readonly Worker[], config: UpstreamConfig) {
    for (const w of workers) {
      const url = new URL(w.url);
      const pool = new Pool(url.origin, {
        connections: config.connections ?? null,
        headersTimeout: config.headersTimeoutMs,
        bodyTimeout: config.bodyTimeoutMs,
        keepAliveTimeout: config.keepAliveTimeoutMs,
        connect: { timeout: config.connectTimeoutMs },
      });
      this.#pools.set(w.id, { pool, basePath: url.pathname.replace(/\/+$/, '') });
    }
  }

  get(worker: Worker): { pool: Pool; basePath: string } {
    return this.#pools.get(worker.id)!;
  }

  async close(): Promise<void> {
    await Promise.all([...this.#pools.values()].map(({ pool }) => pool.destroy()));
  }
}

/** Everything one forwarded request needs; built once per request. */
export interface ForwardJob {
  readonly worker: Worker;
  readonly strategy: string;
  readonly route: string;
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
  readonly requestId: string;
  readonly ticket: LoadTicket;
  /** The gateway's own response headers (`x-kvgate-*`, `x-request-id`), on success and on error alike. */
  readonly responseHeaders: Record<string, string>;
  /** `performance.now()` when the request arrived. */
  readonly started: number;
}

export interface ForwardDeps {
  readonly fleet: Fleet;
  readonly metrics: GatewayMetrics;
  readonly transport: Transport;
}

/**
 * Sends the request body unchanged to the worker and streams the response back
 * chunk by chunk, honouring back-pressure both ways. Moves the request from
 * prefill to decode on the first body chunk, and releases its load on end,
 * error or client disconnect (which aborts the upstream request at once).
 */
export function forward(deps: ForwardDeps, job: ForwardJob, upstreamHeaders: Record<string, string | string[]>, res: ServerResponse): void {
  const { pool, basePath } = deps.transport.get(job.worker);
  const handler = new ForwardHandler(deps, job, res);
  pool.dispatch({ path: basePath + job.path, method: 'POST', headers: upstreamHeaders, body: job.body }, handler);
}

class ClientGoneError extends Error {
  override name = 'ClientGoneError';
  code = 'KVGATE_CLIENT_GONE';
}

class ForwardHandler implements Dispatcher.DispatchHandler {
  readonly #deps: ForwardDeps;
  readonly #job: ForwardJob;
  readonly #res: ServerResponse;
  #controller: Dispatcher.DispatchController | undefined;
  #status = 0;
  #firstChunk = true;
  #done = false;
  #clientGone = false;

  constructor(deps: ForwardDeps, job: ForwardJob, res: ServerResponse) {
    this.#deps = deps;
    this.#job = job;
    this.#res = res;
    res.on('close', this.#onClose);
    res.on('drain', this.#onDrain);
  }

  #onClose = (): void => {
    if (this.#done) return;
    this.#clientGone = true;
    this.#controller?.abort(new ClientGoneError('client disconnected'));
  };

  #onDrain = (): void => {
    this.#controller?.resume();
  };

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.#clientGone) controller.abort(new ClientGoneError('client disconnected'));
  }

  onResponseStart(_c: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    this.#status = statusCode;
    const job = this.#job;
    this.#res.writeHead(statusCode, clientResponseHeaders(headers, job.responseHeaders));
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#firstChunk) {
      this.#firstChunk = false;
      this.#deps.fleet.firstToken(this.#job.ticket);
      this.#deps.metrics.ttft(this.#job.strategy, this.#job.worker.id, (performance.now() - this.#job.started) / 1000);
    }
    if (!this.#res.write(chunk)) controller.pause();
  }

  onResponseEnd(): void {
    this.#res.end();
    this.#finish(this.#status);
  }

  onResponseError(_c: Dispatcher.DispatchController, err: Error): void {
    const job = this.#job;
    if (this.#clientGone || err instanceof ClientGoneError) {
      this.#deps.metrics.upstreamError(job.worker.id, 'client_abort');
      this.#finish(499);
      return;
    }
    const kind = errorKind(err);
    this.#deps.metrics.upstreamError(job.worker.id, kind);
    if (kind === 'connect') this.#deps.fleet.setHealthy(job.worker, false, err.message);
    const status = kind === 'timeout' ? 504 : 502;
    sendError(this.#res, new GatewayError(status, `upstream worker '${job.worker.id}' failed: ${err.message}`, 'upstream_error', `upstream_${kind}`, null, true), job.responseHeaders);
    this.#finish(status);
  }

  #finish(status: number): void {
    if (this.#done) return;
    this.#done = true;
    const job = this.#job;
    this.#res.off('drain', this.#onDrain);
    this.#deps.fleet.finish(job.ticket);
    this.#deps.metrics.request(job.route, job.worker.id, job.strategy, status);
    this.#deps.metrics.duration(job.strategy, job.worker.id, (performance.now() - job.started) / 1000);
  }
}

function errorKind(err: Error): string {
  const code = (err as { code?: string }).code ?? '';
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') return 'timeout';
  if (code === 'ECONNREFUSED' || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'ENOTFOUND' || code === 'EHOSTUNREACH') return 'connect';
  if (code === 'ECONNRESET' || code === 'UND_ERR_SOCKET' || code === 'EPIPE') return 'reset';
  return 'other';
}
