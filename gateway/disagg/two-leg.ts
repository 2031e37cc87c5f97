import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { GatewayError, sendError } from '../front/errors.js';
import type { Fleet, Worker } from '../fleet/fleet.js';
import type { Transport } from '../proxy/forward.js';
import { clientResponseHeaders, upstreamRequestHeaders } from '../proxy/headers.js';
import { withWorkerAuth } from '../proxy/upstream-auth.js';
import type { GatewayMetrics } from '../ops/metrics.js';
import type { PromptBlocksProvider, Routed } from '../routing/pipeline.js';
import { ADMIN_TOKEN_HEADER } from '../routing/policies/overrides.js';
import { KV_INDEXER_SERVICE } from '../routing/strategies/kv.js';
import { asPrefixMatcher } from '../routing/strategies/overlap.js';
import type { RouteContext } from '../routing/strategies/strategy.js';
import { RequestOutcome } from '../proxy/usage-sniffer.js';
import type { DisaggConfig } from './config.js';
import { decide, type DisaggPlan } from './decide.js';
import { decodeBody, prefillBody, sendPrefill, streamLeg } from './legs.js';
import { DisaggMetrics, OutputCounter } from './observe.js';
import { Planner, type PoolWorkers } from './planner.js';

export interface DisaggDeps {
  readonly config: DisaggConfig;
  readonly fleet: Fleet;
  readonly transport: Transport;
  readonly metrics: GatewayMetrics;
  readonly log: Logger;
  /** `services.kvIndexer`: the prefix matcher used for the uncached-prefill estimate. */
  readonly services: Readonly<Record<string, unknown>>;
  /** Hashes the prompt when the request's strategy did not (so the threshold sees real overlap). */
  readonly promptBlocks?: PromptBlocksProvider | undefined;
  readonly blockSize: number;
  readonly now?: (() => number) | undefined;
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
  | { kind: 'final'; worker: Worker; status: number; headers: Record<string, unknown>; body: Buffer }
  | { kind: 'client_gone'; worker: Worker }
  | { kind: 'failed' };

/** Output tokens assumed for decode-block accounting when the request sets no limit (as the front does). */
const DEFAULT_OUTPUT_TOKENS = 256;

/**
 * Disaggregated serving through the gateway, as vLLM's reference proxy does it
 * with NixlConnector (docs/engine-wire-formats.md, P/D), for pools that have prefill
 * workers: decide (decide.ts), send the prefill leg (stream off, 1 token,
 * `kv_transfer_params.do_remote_decode`), pass the engine's `kv_transfer_params`
 * with the original request to the decode worker, stream its answer back. One
 * `x-request-id` for both legs. A prefill leg that fails goes to another
 * prefill worker, then whole to the decode side; a client that leaves aborts
 * whichever leg is running. The planner watches it all (planner.ts).
 */
export class Disaggregation {
  readonly planner: Planner;
  readonly #d: DisaggDeps;
  readonly #m: DisaggMetrics;
  readonly #handles = new Map<string, boolean>();
  readonly #poolMembers = new Map<string, readonly Worker[]>();

  constructor(deps: DisaggDeps) {
    this.#d = deps;
    this.#m = new DisaggMetrics(deps.metrics.registry);
    this.planner = new Planner(deps.config.planner, deps.now ?? Date.now, (pool) => this.#poolWorkers(pool));
    this.planner.register(deps.metrics.registry);
  }

  /** True when the request's pool (or the model's whole fleet) has prefill workers and decode-capable ones. */
  handles(routed: Routed): boolean {
    if (!this.#d.config.enabled) return false;
    const pool = routed.selection.pool;
    const key = `${routed.ctx.model}\0${pool?.name ?? ''}`;
    let yes = this.#handles.get(key);
    if (yes === undefined) {
      const members = this.#d.fleet.workers.filter(
        (w) => w.models.includes(routed.ctx.model) && (!pool || pool.members.has(w.id)),
      );
      yes = members.some((w) => w.role === 'prefill') && members.some((w) => w.role !== 'prefill');
      this.#handles.set(key, yes);
      if (yes)
        this.#poolMembers.set(pool?.name ?? 'default', [
          ...(this.#poolMembers.get(pool?.name ?? 'default') ?? []),
          ...members,
        ]);
    }
    return yes;
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
  async explain(routed: Routed): Promise<Record<string, unknown>> {
    const ctx = await this.#withBlocks(routed);
    const plan = this.#plan(routed, ctx);
    const leg = (w: Worker | undefined, d: { explain: unknown; predictedCachedBlocks?: number } | undefined) =>
      w ? { worker: w.id, role: w.role, predictedCachedBlocks: d?.predictedCachedBlocks, explain: d?.explain } : null;
    return {
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
    };
  }

  /** `/debug/planner`: every pool's advice with the inputs it used. */
  plannerReport(): unknown {
    return { targets: this.#d.config.planner, pools: this.planner.pools().map((p) => this.planner.snapshot(p)) };
  }

  #poolWorkers(pool: string): PoolWorkers {
    const members = new Set(this.#poolMembers.get(pool) ?? []);
    const out = { prefill: 0, decode: 0, both: 0 };
    for (const w of members) out[w.role]++;
    return out;
  }

  async #withBlocks(routed: Routed): Promise<RouteContext> {
    const { ctx, request } = routed;
    if (ctx.blocks || !this.#d.promptBlocks) return ctx;
    const blocks = await this.#d.promptBlocks(request.body, request.model, request.kind).catch(() => undefined);
    return blocks ? { ...ctx, blocks, promptTokens: blocks.tokenCount } : ctx;
  }

  #plan(routed: Routed, ctx: RouteContext): DisaggPlan<Worker> {
    return decide({
      ctx,
      strategy: routed.strategy,
      candidates: routed.candidates,
      config: this.#d.config,
      matcher: asPrefixMatcher(this.#d.services[KV_INDEXER_SERVICE]),
      blockSize: this.#d.blockSize,
    });
  }

  async #serve(job: DisaggJob): Promise<void> {
    const { routed, res } = job;
    const { selection, request } = routed;
    const d = this.#d;
    const strategy = routed.strategy.name;
    const arm = selection.arm;
    const pool = selection.pool?.name ?? 'default';
    const outcome = new RequestOutcome(d.metrics, strategy, arm, selection.armStats, job.started);
    const abort = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) abort.abort();
    });
    const ctx = await this.#withBlocks(routed);
    if (res.destroyed) return outcome.end(499);
    const plan = this.#plan(routed, ctx);
    const blockSize = ctx.blocks?.blockSize ?? d.blockSize;
    const blocks = Math.ceil((plan.promptTokens + (request.maxTokens ?? DEFAULT_OUTPUT_TOKENS)) / blockSize);
    const headers = upstreamRequestHeaders(job.req.headers, job.requestId, 0, {
      clientAddress: job.req.socket.remoteAddress,
      passAuthorization: d.transport.config.passClientAuthorization,
    });
    delete headers[ADMIN_TOKEN_HEADER];
    const predicted = plan.aggregatedDecision.predictedCachedBlocks;
    d.metrics.routed(
      strategy,
      plan.promptTokens,
      ctx.blocks && predicted !== undefined ? predicted * blockSize : undefined,
      arm,
    );
    this.planner.arrival(pool, plan.promptTokens, plan.uncachedTokens);

    let path: Path = plan.path;
    let prefill: PrefillOutcome | undefined;
    if (plan.path === 'disaggregated') {
      prefill = await this.#prefill(job, plan, ctx, headers, abort.signal, pool, blocks);
      if (prefill.kind === 'client_gone') {
        d.metrics.request(job.route, prefill.worker.id, strategy, 499, arm);
        return outcome.end(499);
      }
      if (prefill.kind === 'final') {
        // The engine refused the request itself (a 4xx): the decode worker would too.
        const h = clientResponseHeaders(prefill.headers as never, {
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
    await this.#decode(
      job,
      plan,
      ctx,
      path,
      prefill?.kind === 'ok' ? prefill : undefined,
      headers,
      abort.signal,
      pool,
      blocks,
      outcome,
    );
  }

  /** The prefill leg, on the planned worker, then (failures only) on other prefill workers. */
  async #prefill(
    job: DisaggJob,
    plan: DisaggPlan<Worker>,
    ctx: RouteContext,
    headers: Record<string, string | string[]>,
    signal: AbortSignal,
    pool: string,
    blocks: number,
  ): Promise<PrefillOutcome> {
    const d = this.#d;
    const body = prefillBody(job.routed.request.body);
    const tried = new Set<Worker>();
    let worker = plan.prefill!;
    for (let attempt = 0; ; attempt++) {
      tried.add(worker);
      const ticket = d.fleet.start(worker, plan.promptTokens, blocks);
      this.planner.prefillStarted(pool, worker.id);
      const t0 = performance.now();
      const { pool: upstream, basePath } = d.transport.get(worker);
      const r = await sendPrefill(upstream, basePath + job.path, withWorkerAuth(worker, headers), body, signal);
      d.fleet.finish(ticket);
      this.planner.prefillEnded(pool, worker.id, r.ok ? plan.uncachedTokens : 0);
      if (r.ok) {
        this.#m.prefill(worker.id, (performance.now() - t0) / 1000);
        return { kind: 'ok', worker, params: r.params };
      }
      if (r.final) return { kind: 'final', worker, status: r.status, headers: r.headers, body: r.body };
      if (r.kind === 'client_abort') return { kind: 'client_gone', worker };
      this.#m.prefillFailed(worker.id, r.kind);
      d.metrics.upstreamError(worker.id, r.kind);
      d.log.warn(
        { requestId: job.requestId, worker: worker.id, kind: r.kind, message: r.message },
        'prefill leg failed',
      );
      const remaining = plan.prefillCandidates.filter((w) => !tried.has(w) && w.available);
      if (attempt >= d.config.prefillRetries || remaining.length === 0) return { kind: 'failed' };
      const next = job.routed.strategy.choose(ctx, remaining);
      worker = remaining.find((w) => w.id === next.worker.id) ?? remaining[0]!;
    }
  }

  /**
   * The decode leg (disaggregated) or the whole request (aggregated, prefill
   * fallback), streamed to the client. A failure before any byte reached the
   * client is retried on another decode-side worker (`upstream.retry.attempts`);
   * the prefill engine keeps the blocks until one of them pulls them.
   */
  async #decode(
    job: DisaggJob,
    plan: DisaggPlan<Worker>,
    ctx: RouteContext,
    path: Path,
    prefill: { worker: Worker; params: Record<string, unknown> } | undefined,
    headers: Record<string, string | string[]>,
    signal: AbortSignal,
    pool: string,
    blocks: number,
    outcome: RequestOutcome,
  ): Promise<void> {
    const d = this.#d;
    const { routed, res } = job;
    const strategy = routed.strategy.name;
    const arm = routed.selection.arm;
    const body = prefill ? decodeBody(routed.request.body, prefill.params) : routed.request.raw;
    const tried = new Set<Worker>();
    let worker = prefill ? plan.decode! : plan.aggregated;
    for (let attempt = 0; ; attempt++) {
      tried.add(worker);
      const w = worker;
      const responseHeaders: Record<string, string> = {
        'x-kvgate-worker': prefill ? `prefill=${prefill.worker.id},decode=${w.id}` : w.id,
        'x-kvgate-strategy': strategy,
        'x-kvgate-arm': arm,
        'x-request-id': job.requestId,
        'x-kvgate-disagg': path,
      };
      if (attempt > 0) responseHeaders['x-kvgate-retries'] = String(attempt);
      // The decode leg holds decode load from the start: its prefill happened elsewhere.
      const ticket = d.fleet.start(w, prefill ? 0 : plan.promptTokens, blocks);
      if (prefill) {
        d.fleet.firstToken(ticket);
        this.planner.decodeStarted(pool, w.id);
      } else {
        this.planner.prefillStarted(pool, w.id);
      }
      let firstAt: number | undefined;
      const counter = new OutputCounter(routed.request.kind === 'chat');
      const remaining = () => plan.decodeCandidates.filter((x) => !tried.has(x) && x.available);
      const canRetry = attempt < d.transport.config.retry.attempts && remaining().length > 0;
      const { pool: upstream, basePath } = d.transport.get(w);
      const r = await streamLeg(
        upstream,
        basePath + job.path,
        withWorkerAuth(w, headers),
        body,
        res,
        responseHeaders,
        signal,
        canRetry,
        {
          first: () => {
            firstAt = performance.now();
            d.fleet.firstToken(ticket);
            d.metrics.ttft(strategy, w.id, (firstAt - job.started) / 1000, arm);
            if (!prefill) {
              this.planner.prefillEnded(pool, w.id, plan.uncachedTokens);
              this.planner.decodeStarted(pool, w.id);
            }
          },
          data: (chunk) => {
            outcome.data(chunk);
            counter.data(chunk);
          },
        },
      );
      d.fleet.finish(ticket);
      if (firstAt === undefined && !prefill) this.planner.prefillEnded(pool, w.id, 0);
      else this.planner.decodeEnded(pool, w.id, firstAt === undefined ? 0 : counter.tokens);
      if (r.committed || r.kind === 'client_abort' || !r.retryable || !canRetry) {
        let status: number;
        if (r.committed) {
          status = r.status;
          if (r.kind) d.metrics.upstreamError(w.id, r.kind);
          if (status === 200 && firstAt !== undefined) {
            const end = performance.now();
            const tokens = counter.tokens;
            this.planner.finished(
              pool,
              firstAt - job.started,
              tokens > 1 ? (end - firstAt) / (tokens - 1) : undefined,
              tokens,
            );
          }
        } else if (r.kind === 'client_abort') {
          status = 499;
          d.metrics.upstreamError(w.id, 'client_abort');
        } else {
          d.metrics.upstreamError(w.id, r.kind);
          const err = new GatewayError(
            r.kind === 'timeout' ? 504 : 502,
            `upstream worker '${w.id}' failed: ${r.message}`,
            'upstream_error',
            `upstream_${r.kind}`,
            null,
            true,
          );
          sendError(res, err, responseHeaders);
          status = err.status;
        }
        d.metrics.request(job.route, w.id, strategy, status, arm);
        d.metrics.duration(strategy, w.id, (performance.now() - job.started) / 1000, arm);
        return outcome.end(status);
      }
      d.metrics.upstreamError(w.id, r.kind);
      d.metrics.retry(w.id, r.kind);
      const left = remaining();
      const next = routed.strategy.choose(ctx, left);
      worker = left.find((x) => x.id === next.worker.id) ?? left[0]!;
    }
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
