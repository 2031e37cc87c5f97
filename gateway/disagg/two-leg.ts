import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { GatewayError, sendError } from '../front/errors.js';
import type { Fleet, Worker } from '../fleet/fleet.js';
import { forward, type Collected, type Transport } from '../proxy/forward.js';
import { requestBlocks } from '../fleet/load.js';
import { clientResponseHeaders, upstreamRequestHeaders } from '../proxy/headers.js';
import { rerouter } from '../proxy/retry.js';
import type { GatewayMetrics } from '../ops/metrics.js';
import type { Routed } from '../routing/pipeline.js';
import { ADMIN_TOKEN_HEADER } from '../routing/policies/overrides.js';
import type { PrefixMatcher } from '../routing/strategies/strategy.js';
import { RequestOutcome } from '../proxy/usage-sniffer.js';
import type { DisaggConfig } from './config.js';
import { decide, type DisaggPlan } from './decide.js';
import { decodeBody, prefillBody, readPrefillParams } from './legs.js';
import { DisaggMetrics, OutputCounter } from './observe.js';
import { Planner } from './planner.js';
import type { PdSplit } from './split.js';

export interface DisaggDeps {
  readonly config: DisaggConfig;
  readonly fleet: Fleet;
  readonly transport: Transport;
  readonly metrics: GatewayMetrics;
  readonly log: Logger;
  /** Which pools are split; the same object narrows the pipeline's candidates (`split.split`). */
  readonly split: PdSplit;
  /** The events-fed KV index, for the uncached-prefill estimate. */
  readonly index: PrefixMatcher | undefined;
  readonly blockSize: number;
  readonly now?: (() => number) | undefined;
  /** Retry backoff jitter. */
  readonly random?: (() => number) | undefined;
}

/** One request handed over by the front (gateway/front/server.ts) after routing. */
export interface DisaggJob {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly routed: Routed;
  readonly requestId: string;
  /** `performance.now()` when the request arrived. */
  readonly started: number;
  /** Metric label of the route (`chat`, `completions`). */
  readonly route: string;
  /** Upstream path, with query string. */
  readonly path: string;
}

type Path = 'disaggregated' | 'aggregated' | 'prefill_fallback';
type PrefillOutcome =
  | { kind: 'ok'; worker: Worker; params: Record<string, unknown> }
  | { kind: 'final'; worker: Worker; status: number; headers: IncomingHttpHeaders; body: Buffer }
  | { kind: 'client_gone'; worker: Worker }
  | { kind: 'failed' };

/** What both legs of one request share. */
interface Leg {
  readonly job: DisaggJob;
  readonly plan: DisaggPlan<Worker>;
  readonly headers: Record<string, string | string[]>;
  /** Planner pool name. */
  readonly pool: string;
  /** KV blocks the request holds (prompt plus expected output). */
  readonly blocks: number;
}

/**
 * Disaggregated serving through the gateway, as vLLM's reference proxy does it
 * with NixlConnector (engine-wire-formats.md §4), for pools that have prefill
 * workers. The pipeline already narrowed the pool to its decode side and let
 * the strategy choose there (where the request would run whole); decide.ts
 * picks the path and the legs' workers. Each leg is a job of the one
 * forwarding engine (gateway/proxy/forward.ts), so both get breakers,
 * timeouts, retries with backoff, upstream auth, DP rank and accounting: the
 * prefill leg (stream off, 1 token, `kv_transfer_params.do_remote_decode`)
 * collects its answer for the engine's `kv_transfer_params`; the decode leg
 * sends them with the original request and streams the answer back. One
 * `x-request-id` for both legs. A prefill leg that fails on every prefill
 * worker it may try is served whole on the decode side; a client that leaves
 * aborts whichever leg is running. The planner watches it all (planner.ts).
 */
export class Disaggregation {
  readonly planner: Planner;
  readonly #d: DisaggDeps;
  readonly #m: DisaggMetrics;

  constructor(deps: DisaggDeps) {
    this.#d = deps;
    this.#m = new DisaggMetrics(deps.metrics.registry);
    this.planner = new Planner(deps.config.planner, deps.now ?? Date.now, (pool) => deps.split.poolWorkers(pool));
    this.planner.register(deps.metrics.registry);
  }

  /** True when the pipeline split the request's pool (it has prefill workers and decode-capable ones). */
  handles(routed: Routed): boolean {
    return this.#d.config.enabled && routed.prefillCandidates !== undefined;
  }

  /** Serves the request; answers every failure itself and never rejects. */
  async serve(job: DisaggJob): Promise<void> {
    try {
      await this.#serve(job);
    } catch (err) {
      this.#d.log.error({ err, requestId: job.requestId }, 'disaggregated request failed');
      sendError(job.res, new GatewayError(500, 'internal gateway error', 'upstream_error', 'internal_error'), {
        'x-request-id': job.requestId,
      });
    }
  }

  /** `/debug/route`: what the request would do, both choices with their reasons. Touches no load. */
  explain(routed: Routed): Promise<Record<string, unknown>> {
    const plan = this.#plan(routed);
    const leg = (w: Worker | undefined, d: { explain: unknown; predictedCachedBlocks?: number } | undefined) =>
      w ? { worker: w.id, role: w.role, predictedCachedBlocks: d?.predictedCachedBlocks, explain: d?.explain } : null;
    return Promise.resolve({
      path: plan.path,
      reason: plan.reason,
      mode: this.#d.config.mode,
      minUncachedTokens: this.#d.config.minUncachedTokens,
      promptTokens: plan.promptTokens,
      uncachedTokens: plan.uncachedTokens,
      prefillQueueTokens: plan.prefillQueueTokens,
      prefill: leg(plan.prefill, plan.prefillDecision),
      decode: leg(plan.decode, plan.decodeDecision),
      aggregated: leg(plan.aggregated, plan.aggregatedDecision),
    });
  }

  /** `/debug/planner`: every pool's advice with the inputs it used. */
  plannerReport(): unknown {
    return { targets: this.#d.config.planner, pools: this.planner.pools().map((p) => this.planner.snapshot(p)) };
  }

  #plan(routed: Routed): DisaggPlan<Worker> {
    return decide({
      ctx: routed.ctx,
      strategy: routed.strategy,
      candidates: [...new Set([...(routed.prefillCandidates ?? []), ...routed.candidates])],
      aggregatedDecision: routed.decision,
      config: this.#d.config,
      matcher: this.#d.index,
      blockSize: this.#d.blockSize,
    });
  }

  async #serve(job: DisaggJob): Promise<void> {
    const { routed, res } = job;
    const { selection, request, ctx } = routed;
    const d = this.#d;
    const strategy = routed.strategy.name;
    const arm = selection.arm;
    const outcome = new RequestOutcome(d.metrics, strategy, arm, selection.armStats, job.started);
    const plan = this.#plan(routed);
    const blockSize = ctx.blocks?.blockSize ?? d.blockSize;
    const headers = upstreamRequestHeaders(job.req.headers, job.requestId, 0, {
      clientAddress: job.req.socket.remoteAddress,
      passAuthorization: d.transport.config.passClientAuthorization,
    });
    delete headers[ADMIN_TOKEN_HEADER];
    const leg: Leg = {
      job,
      plan,
      headers,
      pool: selection.pool?.name ?? 'default',
      blocks: requestBlocks(plan.promptTokens, request.maxTokens, blockSize),
    };
    const predicted = plan.aggregatedDecision.predictedCachedBlocks;
    d.metrics.routed(
      strategy,
      plan.promptTokens,
      ctx.blocks && predicted !== undefined ? predicted * blockSize : undefined,
      arm,
    );
    this.planner.arrival(leg.pool, plan.promptTokens, plan.uncachedTokens);

    let path: Path = plan.path;
    let prefill: PrefillOutcome | undefined;
    if (plan.path === 'disaggregated') {
      prefill = await this.#prefill(leg);
      if (prefill.kind === 'client_gone') {
        d.metrics.request(job.route, prefill.worker.id, strategy, 499, arm);
        return outcome.end(499);
      }
      if (prefill.kind === 'final') {
        // The engine refused the request itself (a 4xx): the decode worker would too.
        const h = clientResponseHeaders(prefill.headers, {
          'x-kvgate-worker': `prefill=${prefill.worker.id}`,
          'x-kvgate-strategy': strategy,
          'x-request-id': job.requestId,
          'x-kvgate-disagg': 'disaggregated',
        });
        res.writeHead(prefill.status, h).end(prefill.body);
        d.metrics.request(job.route, prefill.worker.id, strategy, prefill.status, arm);
        return outcome.end(prefill.status);
      }
      if (prefill.kind === 'failed') path = 'prefill_fallback';
    }
    this.#m.path(path);
    if (res.destroyed) {
      d.metrics.request(job.route, prefill?.kind === 'ok' ? prefill.worker.id : 'none', strategy, 499, arm);
      return outcome.end(499);
    }
    this.#decode(leg, path, prefill?.kind === 'ok' ? prefill : undefined, outcome);
  }

  /**
   * The prefill leg: a collecting job on the planned prefill worker, retried
   * (`prefillRetries`) on the prefill workers the strategy ranks next when it
   * fails or answers without `kv_transfer_params`.
   */
  #prefill(leg: Leg): Promise<PrefillOutcome> {
    const d = this.#d;
    const { job, plan, pool } = leg;
    const { routed } = job;
    const worker = plan.prefill!;
    const decision = plan.prefillDecision!;
    const ticket = d.fleet.start(worker, plan.promptTokens, leg.blocks);
    routed.strategy.onRouted?.(routed.ctx, decision);
    let params: Record<string, unknown> | undefined;
    let sentAt = 0;
    return new Promise((resolve) => {
      const done = (r: Collected): void => {
        if (r.ok && params) resolve({ kind: 'ok', worker: r.worker, params });
        else if (r.ok) resolve({ kind: 'final', worker: r.worker, status: r.status, headers: r.headers, body: r.body });
        else if (r.status === 499) resolve({ kind: 'client_gone', worker: r.worker });
        else resolve({ kind: 'failed' });
      };
      forward(
        d,
        {
          worker,
          ticket,
          strategy: routed.strategy.name,
          route: job.route,
          path: job.path,
          headers: job.req.headers,
          body: prefillBody(routed.request.body),
          requestId: job.requestId,
          responseHeaders: {},
          started: job.started,
          arm: routed.selection.arm,
          dataParallelRank: decision.dataParallelRank,
          reroute: rerouter(d.fleet, {
            ctx: routed.ctx,
            strategy: routed.strategy,
            candidates: plan.prefillCandidates,
          }),
          maxRetries: d.config.prefillRetries,
          hooks: {
            sent: (w) => {
              sentAt = performance.now();
              this.planner.prefillStarted(pool, w.id);
            },
            settled: (w, status, failure) => {
              const ok = failure === undefined && params !== undefined;
              this.planner.prefillEnded(pool, w.id, ok ? plan.uncachedTokens : 0);
              if (ok) this.#m.prefill(w.id, (performance.now() - sentAt) / 1000);
              if (!failure) return;
              this.#m.prefillFailed(w.id, failure.kind);
              d.log.warn(
                { requestId: job.requestId, worker: w.id, kind: failure.kind, message: failure.message },
                'prefill leg failed',
              );
            },
          },
          collect: {
            check: (status, body) => {
              // A 4xx is the engine refusing the request itself: handed back, not retried.
              if (status >= 400 && status < 500) return undefined;
              if (status !== 200) return { kind: 'status', message: `status ${status}` };
              const r = readPrefillParams(body);
              if ('kind' in r) return r;
              params = r.params;
              return undefined;
            },
            done,
          },
        },
        leg.headers,
        job.res,
      );
    });
  }

  /**
   * The decode leg (disaggregated) or the whole request (aggregated, prefill
   * fallback), a streaming job. A failure before any byte reached the client
   * is retried on another decode-side worker (`upstream.retry`); the prefill
   * engine keeps the blocks until one of them pulls them.
   */
  #decode(
    leg: Leg,
    path: Path,
    prefill: { worker: Worker; params: Record<string, unknown> } | undefined,
    outcome: RequestOutcome,
  ): void {
    const d = this.#d;
    const { job, plan, pool } = leg;
    const { routed } = job;
    const strategy = routed.strategy.name;
    const worker = prefill ? plan.decode! : plan.aggregated;
    const decision = prefill ? plan.decodeDecision! : plan.aggregatedDecision;
    // The decode leg holds decode load from the start: its prefill happened elsewhere.
    const ticket = d.fleet.start(worker, prefill ? 0 : plan.promptTokens, leg.blocks);
    routed.strategy.onRouted?.(routed.ctx, decision);
    const responseHeaders: Record<string, string> = {
      'x-kvgate-strategy': strategy,
      'x-kvgate-arm': routed.selection.arm,
      'x-request-id': job.requestId,
      'x-kvgate-disagg': path,
    };
    if (!prefill && decision.predictedCachedBlocks !== undefined)
      responseHeaders['x-kvgate-cached-blocks'] = String(decision.predictedCachedBlocks);
    const counter = new OutputCounter(routed.request.kind === 'chat');
    let firstAt: number | undefined;
    forward(
      d,
      {
        worker,
        ticket,
        strategy,
        route: job.route,
        path: job.path,
        headers: job.req.headers,
        body: prefill ? decodeBody(routed.request.body, prefill.params) : routed.request.raw,
        requestId: job.requestId,
        responseHeaders,
        started: job.started,
        arm: routed.selection.arm,
        dataParallelRank: decision.dataParallelRank,
        reroute: rerouter(d.fleet, { ctx: routed.ctx, strategy: routed.strategy, candidates: plan.decodeCandidates }),
        workerHeader: prefill ? (w) => `prefill=${prefill.worker.id},decode=${w.id}` : undefined,
        observer: {
          data: (chunk) => {
            outcome.data(chunk);
            counter.data(chunk);
          },
          end: (status) => outcome.end(status),
        },
        hooks: {
          sent: (w, t) => {
            firstAt = undefined;
            if (prefill) {
              d.fleet.firstToken(t);
              this.planner.decodeStarted(pool, w.id);
            } else {
              this.planner.prefillStarted(pool, w.id);
            }
          },
          first: (w) => {
            firstAt = performance.now();
            if (prefill) return;
            this.planner.prefillEnded(pool, w.id, plan.uncachedTokens);
            this.planner.decodeStarted(pool, w.id);
          },
          settled: (w, status) => {
            if (firstAt === undefined && !prefill) return this.planner.prefillEnded(pool, w.id, 0);
            const tokens = firstAt === undefined ? 0 : counter.tokens;
            this.planner.decodeEnded(pool, w.id, tokens);
            if (status !== 200 || firstAt === undefined) return;
            const itl = tokens > 1 ? (performance.now() - firstAt) / (tokens - 1) : undefined;
            this.planner.finished(pool, firstAt - job.started, itl, tokens);
          },
        },
      },
      leg.headers,
      job.res,
    );
  }
}

/** What the front (gateway/front/server.ts) needs: does this routed request take the two-leg path, and serve it. */
export interface DisaggHook {
  handles(routed: Routed): boolean;
  serve(job: DisaggJob): Promise<void>;
}

/** What the admin listener needs: `/debug/route`'s disaggregation section and `/debug/planner`. */
export interface DisaggAdmin {
  handles(routed: Routed): boolean;
  explain(routed: Routed): Promise<Record<string, unknown>>;
  plannerReport(): unknown;
}
