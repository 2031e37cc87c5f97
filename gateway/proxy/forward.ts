import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { Pool, type Dispatcher } from 'undici';
import { z } from 'zod';
import { breakerConfigSchema, type BreakerPass } from './breaker.js';
import { GatewayError, sendError } from '../front/errors.js';
import type { Fleet, LoadTicket, Worker } from '../fleet/fleet.js';
import { clientResponseHeaders } from './headers.js';
import type { GatewayMetrics } from '../ops/metrics.js';
import type { ResponseObserver } from './usage-sniffer.js';
import {
  backoffDelay,
  failureKind,
  retryableStatus,
  retryConfigSchema,
  type FailureKind,
  type Reroute,
} from './retry.js';
import { SseFramer } from './sse-framer.js';
import { withWorkerAuth } from './upstream-auth.js';

/**
 * Upstream connection settings. Generations can take minutes before the first
 * byte (long prompts, queues) and between chunks, so the defaults never cut a
 * healthy generation short: 5 s to connect, 10 min to the response head,
 * 5 min of silence inside a body (0 disables it), and a retry/breaker policy
 * that acts only on failures the client has not seen yet.
 */
export const upstreamConfigSchema = z.strictObject({
  connectTimeoutMs: z.number().int().min(1).default(5_000),
  /** Time from sending the request to the worker's response head. */
  headersTimeoutMs: z.number().int().min(0).default(600_000),
  /** Longest silence between two body chunks (the first included); 0 disables it. */
  bodyTimeoutMs: z.number().int().min(0).default(300_000),
  keepAliveTimeoutMs: z.number().int().min(1).default(60_000),
  /** Connections per worker; unset means unlimited. */
  connections: z.number().int().min(1).optional(),
  retry: retryConfigSchema.prefault({}),
  breaker: breakerConfigSchema.prefault({}),
  /** Forward the client's `Authorization` to workers without an `apiKey` (gateway/proxy/upstream-auth.ts); off: the gateway holds the keys. */
  passClientAuthorization: z.boolean().default(false),
});
export type UpstreamConfig = z.infer<typeof upstreamConfigSchema>;

/** One keep-alive undici `Pool` per worker object (a worker re-added under the same id gets a new one). */
export class Transport {
  readonly #pools = new Map<Worker, { pool: Pool; basePath: string }>();
  readonly config: UpstreamConfig;

  constructor(workers: readonly Worker[], config: UpstreamConfig) {
    this.config = config;
    for (const w of workers) this.add(w);
  }

  /** Opens the worker's pool (idempotent). */
  add(worker: Worker): void {
    if (this.#pools.has(worker)) return;
    const c = this.config;
    const url = new URL(worker.url);
    const pool = new Pool(url.origin, {
      connections: c.connections ?? null,
      headersTimeout: c.headersTimeoutMs,
      bodyTimeout: c.bodyTimeoutMs,
      keepAliveTimeout: c.keepAliveTimeoutMs,
      connect: { timeout: c.connectTimeoutMs },
    });
    this.#pools.set(worker, { pool, basePath: url.pathname.replace(/\/+$/, '') });
  }

  get(worker: Worker): { pool: Pool; basePath: string } {
    let p = this.#pools.get(worker);
    // Only a request routed in the instant its worker was drained can miss: give it a pool rather than crash; close() ends it.
    if (p === undefined) {
      this.add(worker);
      p = this.#pools.get(worker)!;
    }
    return p;
  }

  /** Closes a drained worker's pool: waits for its requests up to `graceMs`, then cuts them. */
  async remove(worker: Worker, graceMs = 5_000): Promise<void> {
    const p = this.#pools.get(worker);
    if (p === undefined) return;
    this.#pools.delete(worker);
    let timer: NodeJS.Timeout | undefined;
    const cut = new Promise<'cut'>((resolve) => (timer = setTimeout(() => resolve('cut'), graceMs)));
    const outcome = await Promise.race([
      p.pool.close().then(
        () => 'closed' as const,
        () => 'closed' as const,
      ),
      cut,
    ]);
    clearTimeout(timer);
    if (outcome === 'cut') await p.pool.destroy().catch(() => undefined);
  }

  async close(): Promise<void> {
    const pools = [...this.#pools.values()];
    this.#pools.clear();
    await Promise.all(pools.map(({ pool }) => pool.destroy()));
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
  /** Chooses the next-best worker for a retry; without it a failure is final. */
  readonly reroute?: Reroute | undefined;
  /** The A/B experiment arm (`arm` metric label); `none` outside experiments. */
  readonly arm?: string | undefined;
  /** Sees every upstream body chunk and the final status (engine usage, experiment counters). */
  readonly observer?: ResponseObserver | undefined;
}

export interface ForwardDeps {
  readonly fleet: Fleet;
  readonly metrics: GatewayMetrics;
  readonly transport: Transport;
  readonly random?: (() => number) | undefined;
}

/**
 * Sends the request body unchanged to the worker and streams the response back
 * chunk by chunk, honouring back-pressure both ways. Until the first body byte
 * goes to the client, a failure (connect, reset, 502/503, timeout) is retried
 * on the next-best worker; after it, a broken SSE stream ends with an OpenAI
 * error event and any other body is cut. Load follows the request: released
 * on the failed worker, taken on the next, released on end or client abort.
 */
export function forward(
  deps: ForwardDeps,
  job: ForwardJob,
  upstreamHeaders: Record<string, string | string[]>,
  res: ServerResponse,
): void {
  new Forwarding(deps, job, upstreamHeaders, res).send(job.worker, job.ticket);
}

class ClientGoneError extends Error {
  override name = 'ClientGoneError';
  code = 'KVGATE_CLIENT_GONE';
}

/** One request across its attempts; owns the client response. */
class Forwarding {
  readonly #d: ForwardDeps;
  readonly #job: ForwardJob;
  readonly #res: ServerResponse;
  readonly #upstreamHeaders: Record<string, string | string[]>;
  readonly #responseHeaders: Record<string, string>;
  readonly #tried = new Set<Worker>();
  #worker: Worker;
  #ticket: LoadTicket;
  #attempt: Attempt | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #retries = 0;
  #last: { kind: FailureKind; message: string } | undefined;
  #committed = false;
  #sse: SseFramer | undefined;
  #done = false;

  constructor(
    d: ForwardDeps,
    job: ForwardJob,
    upstreamHeaders: Record<string, string | string[]>,
    res: ServerResponse,
  ) {
    this.#d = d;
    this.#job = job;
    this.#res = res;
    this.#upstreamHeaders = { ...upstreamHeaders };
    this.#responseHeaders = { ...job.responseHeaders };
    this.#worker = job.worker;
    this.#ticket = job.ticket;
    res.on('close', this.#onClose);
    res.on('drain', this.#onDrain);
  }

  get committed(): boolean {
    return this.#committed;
  }

  #onClose = (): void => {
    if (this.#done) return;
    if (this.#retryTimer) {
      clearTimeout(this.#retryTimer);
      this.clientAborted();
      return;
    }
    this.#attempt?.abort(new ClientGoneError('client disconnected'));
  };

  #onDrain = (): void => this.#attempt?.resume();

  /** Dispatches one attempt, or moves on at once when the worker's breaker refuses it (its probe slot was taken since routing). */
  send(worker: Worker, ticket: LoadTicket): void {
    this.#tried.add(worker);
    this.#worker = worker;
    this.#ticket = ticket;
    const pass = worker.breaker.pass();
    if (!pass) {
      this.#d.fleet.finish(ticket);
      this.#next(false);
      return;
    }
    this.#responseHeaders['x-kvgate-worker'] = worker.id;
    const { pool, basePath } = this.#d.transport.get(worker);
    this.#attempt = new Attempt(this, worker, pass);
    pool.dispatch(
      {
        path: basePath + this.#job.path,
        method: 'POST',
        headers: withWorkerAuth(worker, this.#upstreamHeaders),
        body: this.#job.body,
      },
      this.#attempt,
    );
  }

  /** True when a retry is allowed and some untried worker can take it. */
  retryPossible(): boolean {
    return (
      this.#job.reroute !== undefined &&
      this.#retries < this.#d.transport.config.retry.attempts &&
      this.#d.fleet.workers.some((w) => w.available && !this.#tried.has(w))
    );
  }

  /** The attempt failed before any byte reached the client. */
  failed(kind: FailureKind, message: string): void {
    this.#d.metrics.upstreamError(this.#worker.id, kind);
    this.#d.fleet.finish(this.#ticket);
    this.#last = { kind, message };
    this.#next(true);
  }

  /** Tries the next-best worker (after a backoff when `counted`), or answers the last failure. */
  #next(counted: boolean): void {
    const retry = this.#d.transport.config.retry;
    const canRetry = !counted || this.#retries < retry.attempts;
    if (this.#res.destroyed) return this.clientAborted();
    const next = canRetry ? this.#job.reroute?.(this.#tried) : undefined;
    if (!next) {
      const last = this.#last;
      const err = last
        ? new GatewayError(
            last.kind === 'timeout' ? 504 : 502,
            `upstream worker '${this.#worker.id}' failed: ${last.message}`,
            'upstream_error',
            `upstream_${last.kind}`,
            null,
            true,
          )
        : new GatewayError(
            503,
            'no available worker could take the request',
            'service_unavailable',
            'no_healthy_worker',
            null,
            true,
          );
      if (this.#retries > 0) this.#responseHeaders['x-kvgate-retries'] = String(this.#retries);
      sendError(this.#res, err, this.#responseHeaders);
      this.finish(err.status);
      return;
    }
    const { worker, decision } = next;
    if (decision.dataParallelRank !== undefined)
      this.#upstreamHeaders['x-data-parallel-rank'] = String(decision.dataParallelRank);
    else delete this.#upstreamHeaders['x-data-parallel-rank'];
    if (decision.predictedCachedBlocks !== undefined)
      this.#responseHeaders['x-kvgate-cached-blocks'] = String(decision.predictedCachedBlocks);
    else delete this.#responseHeaders['x-kvgate-cached-blocks'];
    const go = () => {
      this.#retryTimer = undefined;
      this.send(worker, this.#d.fleet.start(worker, this.#ticket.promptTokens, this.#ticket.blocks));
    };
    if (!counted) return go();
    this.#d.metrics.retry(this.#worker.id, this.#last?.kind ?? 'other');
    this.#retries++;
    this.#responseHeaders['x-kvgate-retries'] = String(this.#retries);
    this.#attempt = undefined;
    this.#retryTimer = setTimeout(go, backoffDelay(retry, this.#retries, this.#d.random ?? Math.random));
  }

  /** First body byte (or the end of an empty body): the response head goes to the client; no retry from here on. */
  commit(status: number, headers: IncomingHttpHeaders): void {
    this.#committed = true;
    if (String(headers['content-type'] ?? '').startsWith('text/event-stream')) this.#sse = new SseFramer();
    this.#res.writeHead(status, clientResponseHeaders(headers, this.#responseHeaders));
    this.#corkThisTick();
  }

  #corked = false;
  #uncork = (): void => {
    this.#corked = false;
    this.#res.uncork();
  };

  /**
   * Everything written in this tick (the head, the chunks of one upstream read,
   * often the end of a small body) leaves in one syscall instead of one each;
   * the next tick flushes, so a stream is never held back.
   */
  #corkThisTick(): void {
    if (this.#corked) return;
    this.#corked = true;
    this.#res.cork();
    process.nextTick(this.#uncork);
  }

  /** Writes a body chunk; false asks for a pause until the client drains. */
  write(chunk: Buffer, first: boolean): boolean {
    if (first) {
      this.#d.fleet.firstToken(this.#ticket);
      this.#d.metrics.ttft(
        this.#job.strategy,
        this.#worker.id,
        (performance.now() - this.#job.started) / 1000,
        this.#job.arm,
      );
    }
    this.#job.observer?.data(chunk);
    const out = this.#sse ? this.#sse.push(chunk) : chunk;
    if (out.length === 0) return true;
    this.#corkThisTick();
    return this.#res.write(out);
  }

  end(status: number): void {
    const rest = this.#sse?.flush();
    if (rest && rest.length > 0) this.#res.write(rest);
    this.#res.end();
    this.finish(status);
  }

  /** The upstream broke after the client got bytes: a final SSE error event, or a cut connection. */
  broken(kind: FailureKind, message: string): void {
    this.#d.metrics.upstreamError(this.#worker.id, kind);
    const err = new GatewayError(
      502,
      `upstream worker '${this.#worker.id}' failed mid-response: ${message}`,
      'upstream_error',
      `upstream_${kind}`,
      null,
      true,
    );
    if (this.#sse && !this.#res.destroyed) {
      // No `data: [DONE]` after it: a stream without [DONE] is visibly incomplete to any SSE reader.
      this.#res.end(this.#sse.errorEvent(JSON.stringify(err.toJSON())));
    } else {
      this.#res.destroy(err);
    }
    this.finish(502);
  }

  /** The client went away; the upstream request was aborted (or never sent). */
  clientAborted(): void {
    if (this.#done) return;
    this.#d.metrics.upstreamError(this.#worker.id, 'client_abort');
    this.finish(499);
  }

  finish(status: number): void {
    if (this.#done) return;
    this.#done = true;
    const job = this.#job;
    this.#res.off('drain', this.#onDrain);
    this.#d.fleet.finish(this.#ticket);
    this.#d.metrics.request(job.route, this.#worker.id, job.strategy, status, job.arm);
    this.#d.metrics.duration(job.strategy, this.#worker.id, (performance.now() - job.started) / 1000, job.arm);
    job.observer?.end(status);
  }
}

/** One dispatch to one worker. The response head is held back until the first body byte, so a failure before it can still be retried. */
class Attempt implements Dispatcher.DispatchHandler {
  readonly #f: Forwarding;
  readonly #worker: Worker;
  readonly #pass: BreakerPass;
  #controller: Dispatcher.DispatchController | undefined;
  #abortReason: Error | undefined;
  #status = 0;
  #headers: IncomingHttpHeaders = {};
  /** A retryable status whose body is read and dropped before the retry. */
  #discard = false;
  #first = true;

  constructor(f: Forwarding, worker: Worker, pass: BreakerPass) {
    this.#f = f;
    this.#worker = worker;
    this.#pass = pass;
  }

  abort(reason: Error): void {
    this.#abortReason = reason;
    this.#controller?.abort(reason);
  }

  resume(): void {
    this.#controller?.resume();
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.#abortReason) controller.abort(this.#abortReason);
  }

  onResponseStart(_c: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    this.#status = statusCode;
    this.#headers = headers;
    if (statusCode >= 500) this.#worker.breaker.failed(this.#pass, `status ${statusCode}`);
    else this.#worker.breaker.succeeded(this.#pass);
    this.#discard = retryableStatus(statusCode) && this.#f.retryPossible();
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#discard) return;
    if (!this.#f.committed) this.#f.commit(this.#status, this.#headers);
    const first = this.#first;
    this.#first = false;
    if (!this.#f.write(chunk, first)) controller.pause();
  }

  onResponseEnd(): void {
    if (this.#discard) return this.#f.failed('status', `status ${this.#status}`);
    if (!this.#f.committed) this.#f.commit(this.#status, this.#headers);
    this.#f.end(this.#status);
  }

  onResponseError(_c: Dispatcher.DispatchController, err: Error): void {
    if (err instanceof ClientGoneError || this.#abortReason) {
      this.#worker.breaker.released(this.#pass);
      this.#f.clientAborted();
      return;
    }
    if (this.#discard) return this.#f.failed('status', `status ${this.#status}`);
    const kind = failureKind(err);
    this.#worker.breaker.failed(this.#pass, `${kind}: ${err.message}`);
    if (this.#f.committed) this.#f.broken(kind, err.message);
    else this.#f.failed(kind, err.message);
  }
}
