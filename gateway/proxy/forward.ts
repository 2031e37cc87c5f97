import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { GatewayError, sendError } from '../front/errors.js';
import type { Fleet, LoadTicket, Worker } from '../fleet/fleet.js';
import { clientResponseHeaders } from './headers.js';
import type { GatewayMetrics } from '../ops/metrics.js';
import type { ResponseObserver } from './usage-sniffer.js';
import { backoffDelay, type FailureKind, type Reroute } from './retry.js';
import { SseFramer } from './sse-framer.js';
import { withWorkerAuth } from './upstream-auth.js';
import { Attempt, ClientGoneError, type AttemptOwner } from './attempt.js';
import type { Transport } from './transport.js';

export { Transport, upstreamConfigSchema, type UpstreamConfig } from './transport.js';

/** Per-attempt hooks, for callers that account work per worker (the P/D planner). */
export interface AttemptHooks {
  /** An attempt was dispatched to `worker`, holding `ticket`. */
  sent?(worker: Worker, ticket: LoadTicket): void;
  /** Its first body byte went to the client (streaming jobs). */
  first?(worker: Worker): void;
  /**
   * Exactly once per sent attempt: `failure` when it failed before the client
   * saw anything (the job moves on or gives up), else the status it ended with
   * (499 when the client left, 502 when the upstream broke mid-body).
   */
  settled?(worker: Worker, status: number, failure?: { kind: FailureKind; message: string }): void;
}

/** The outcome of a collecting job, given once. */
export type Collected =
  | { ok: true; worker: Worker; status: number; headers: IncomingHttpHeaders; body: Buffer }
  /** Every attempt failed (`failure`, the last one's) or none could be made; 499 when the client left. */
  | { ok: false; worker: Worker; status: number; failure: { kind: FailureKind; message: string } | undefined };

/**
 * Turns a job from "stream the answer to the client" into "read the whole
 * answer and hand it over" (the prefill leg of P/D disaggregation reads
 * `kv_transfer_params` from it). Nothing is written to the client.
 */
export interface Collector {
  /** Judges a whole response below 500: a failure counts as the attempt's and moves on to the next worker. */
  check(status: number, body: Buffer): { kind: FailureKind; message: string } | undefined;
  done(result: Collected): void;
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
  /** The first worker's data-parallel rank (retries take their own decision's). */
  readonly dataParallelRank?: number | undefined;
  /** Chooses the next-best worker for a retry; without it a failure is final. */
  readonly reroute?: Reroute | undefined;
  /** Retries allowed; `upstream.retry.attempts` when unset. */
  readonly maxRetries?: number | undefined;
  /** The A/B experiment arm (`arm` metric label); `none` outside experiments. */
  readonly arm?: string | undefined;
  /** Sees every upstream body chunk and the final status (engine usage, experiment counters). */
  readonly observer?: ResponseObserver | undefined;
  /** `x-kvgate-worker` for a worker; its id when unset. */
  readonly workerHeader?: ((worker: Worker) => string) | undefined;
  readonly hooks?: AttemptHooks | undefined;
  /** Collect the body instead of streaming it; the request and duration metrics are then the caller's. */
  readonly collect?: Collector | undefined;
}

export interface ForwardDeps {
  readonly fleet: Fleet;
  readonly metrics: GatewayMetrics;
  readonly transport: Transport;
  readonly random?: (() => number) | undefined;
}

/**
 * Sends the body to the worker and streams the response back chunk by chunk,
 * honouring back-pressure both ways, or (`collect`) reads it whole. Until the
 * first body byte goes to the client, a failure (connect, reset, 502/503,
 * timeout, a breaker that refuses) moves to the next-best worker after a
 * backoff; after it, a broken SSE stream ends with an OpenAI error event and
 * any other body is cut. Load follows the request: released on the failed
 * worker, taken on the next, released on end or client abort.
 */
export function forward(
  deps: ForwardDeps,
  job: ForwardJob,
  upstreamHeaders: Record<string, string | string[]>,
  res: ServerResponse,
): void {
  new Forwarding(deps, job, upstreamHeaders, res).send(job.worker, job.ticket);
}

/** One request across its attempts; owns the client response (unless collecting). */
class Forwarding implements AttemptOwner {
  readonly #d: ForwardDeps;
  readonly #job: ForwardJob;
  readonly #res: ServerResponse;
  readonly #upstreamHeaders: Record<string, string | string[]>;
  readonly #responseHeaders: Record<string, string>;
  readonly #tried = new Set<Worker>();
  readonly #maxRetries: number;
  #worker: Worker;
  #ticket: LoadTicket;
  #attempt: Attempt | undefined;
  /** The current attempt was sent and its `settled` hook is still due. */
  #open = false;
  #retryTimer: NodeJS.Timeout | undefined;
  #retries = 0;
  #last: { kind: FailureKind; message: string } | undefined;
  #committed = false;
  #collected: Collected | undefined;
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
    this.#upstreamHeaders = { ...upstreamHeaders, 'content-length': String(job.body.length) };
    this.#responseHeaders = { ...job.responseHeaders };
    this.#maxRetries = job.maxRetries ?? d.transport.config.retry.attempts;
    this.#worker = job.worker;
    this.#ticket = job.ticket;
    this.#rank(job.dataParallelRank);
    res.on('close', this.#onClose);
    if (!job.collect) res.on('drain', this.#onDrain);
  }

  get committed(): boolean {
    return this.#committed;
  }

  get collecting(): boolean {
    return this.#job.collect !== undefined;
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

  /** vLLM's API server pins a request to a data-parallel rank with this header. */
  #rank(rank: number | undefined): void {
    if (rank !== undefined) this.#upstreamHeaders['x-data-parallel-rank'] = String(rank);
    else delete this.#upstreamHeaders['x-data-parallel-rank'];
  }

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
    this.#responseHeaders['x-kvgate-worker'] = this.#job.workerHeader?.(worker) ?? worker.id;
    const { pool, basePath } = this.#d.transport.get(worker);
    this.#attempt = new Attempt(this, worker, pass);
    this.#open = true;
    this.#job.hooks?.sent?.(worker, ticket);
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

  #settle(status: number, failure?: { kind: FailureKind; message: string }): void {
    if (!this.#open) return;
    this.#open = false;
    this.#job.hooks?.settled?.(this.#worker, status, failure);
  }

  /** True when a retry is allowed and some untried worker can take it. */
  retryPossible(): boolean {
    const reroute = this.#job.reroute;
    return reroute !== undefined && this.#retries < this.#maxRetries && reroute.possible(this.#tried);
  }

  /** The attempt failed before any byte reached the client. */
  failed(kind: FailureKind, message: string): void {
    this.#d.metrics.upstreamError(this.#worker.id, kind);
    this.#d.fleet.finish(this.#ticket);
    this.#last = { kind, message };
    this.#settle(0, this.#last);
    this.#next(true);
  }

  /** Tries the next-best worker (after a backoff when `counted`), or answers the last failure. */
  #next(counted: boolean): void {
    const canRetry = !counted || this.#retries < this.#maxRetries;
    if (this.#res.destroyed) return this.clientAborted();
    const next = canRetry ? this.#job.reroute?.next(this.#tried) : undefined;
    if (!next) return this.#giveUp();
    const { worker, decision } = next;
    this.#rank(decision.dataParallelRank);
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
    this.#retryTimer = setTimeout(
      go,
      backoffDelay(this.#d.transport.config.retry, this.#retries, this.#d.random ?? Math.random),
    );
  }

  /** No worker is left: the last failure goes to the client (or the collector). */
  #giveUp(): void {
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
    if (!this.#job.collect) {
      if (this.#retries > 0) this.#responseHeaders['x-kvgate-retries'] = String(this.#retries);
      sendError(this.#res, err, this.#responseHeaders);
    }
    this.finish(err.status);
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
      this.#job.hooks?.first?.(this.#worker);
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

  /** A collecting job's whole response: accepted, or a failure of this attempt. */
  collected(status: number, headers: IncomingHttpHeaders, body: Buffer): void {
    const failure =
      status >= 500 ? { kind: 'status' as const, message: `status ${status}` } : this.#job.collect!.check(status, body);
    if (failure) return this.failed(failure.kind, failure.message);
    this.#collected = { ok: true, worker: this.#worker, status, headers, body };
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
    this.#res.off('close', this.#onClose);
    this.#d.fleet.finish(this.#ticket);
    this.#settle(status);
    if (job.collect) {
      job.collect.done(this.#collected ?? { ok: false, worker: this.#worker, status, failure: this.#last });
      return;
    }
    this.#d.metrics.request(job.route, this.#worker.id, job.strategy, status, job.arm);
    this.#d.metrics.duration(job.strategy, this.#worker.id, (performance.now() - job.started) / 1000, job.arm);
    job.observer?.end(status);
  }
}
