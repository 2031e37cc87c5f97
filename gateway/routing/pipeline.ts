import type { IncomingHttpHeaders } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { GatewayError } from '../front/errors.js';
import type { Fleet, LoadTicket, Worker } from '../fleet/fleet.js';
import type { AdapterRouting } from '../fleet/adapters.js';
import type { DecisionTurn } from '../fleet/decision-order.js';
import type { GatewayMetrics } from '../ops/metrics.js';
import type { Policy, PolicyInput, Selection } from './policy.js';
import type { Pool } from './policies/pools.js';
import type { InferenceKind, InferenceRequest } from '../front/request.js';
import { Shadower } from './shadow.js';
import type { Decision, PromptBlocks, RouteContext, Strategy } from './strategies/strategy.js';

/**
 * Tokenizes and hashes a prompt into KV blocks, for strategies that set
 * `needsPromptBlocks`. Resolves undefined when the prompt cannot be tokenized
 * (unknown model, no tokenizer); the strategy then routes without blocks.
 */
export type PromptBlocksProvider = (
  body: Record<string, unknown>,
  model: string,
  kind: InferenceKind,
) => Promise<PromptBlocks | undefined>;

/**
 * Splits a pool's candidates into the workers that may prefill for another
 * and the workers that serve a request to its end (P/D disaggregation,
 * gateway/disagg/split.ts), or says the pool is not split (undefined).
 */
export type CandidateSplit = (
  model: string,
  pool: Pool | undefined,
  candidates: readonly Worker[],
) => { readonly prefill: readonly Worker[]; readonly decode: readonly Worker[] } | undefined;

export interface Routed {
  readonly ctx: RouteContext;
  /** The strategy's choice among `candidates` (for a split pool: where the request would run whole). */
  readonly decision: Decision;
  readonly strategy: Strategy;
  readonly worker: Worker;
  /** What the strategy chose from: the pool's available workers, or its decode side when the pool is split. */
  readonly candidates: readonly Worker[];
  /** Set when the pool is split: its available prefill workers (maybe none), for a prefill leg. */
  readonly prefillCandidates?: readonly Worker[] | undefined;
  /** What the policy decided: arm, pool, shadow strategies, rule. */
  readonly selection: Selection;
  readonly request: InferenceRequest;
}

export interface PipelineDeps {
  fleet: Fleet;
  policy: Policy;
  metrics: GatewayMetrics;
  log: Logger;
  sessionHeader: string;
  /** False when `routing.overrides.session` is off: the session header is then ignored. */
  honourSession?: boolean;
  promptBlocks?: PromptBlocksProvider | undefined;
  /** P/D disaggregation: narrows a split pool to its decode side before the strategy chooses, and tokenizes the prompt for its threshold. */
  split?: CandidateSplit | undefined;
  /** LoRA adapters loaded at runtime: a request naming one goes only to workers that have it. */
  adapters?: AdapterRouting | undefined;
  random: () => number;
  now: () => number;
  /** Gateway replicas taking their decisions in arrival order (load sharing's `orderDecisions`). */
  decisionTurn?: ((arrivedAt: number) => DecisionTurn) | undefined;
}

const first = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v);

/**
 * request -> policy -> availability (the fleet, narrowed to the policy's pool,
 * then to its decode side when P/D-split) -> prompt blocks if asked -> strategy. Knows nothing of HTTP transport; `route`
 * is synchronous unless something needs the prompt tokenized, so the common
 * path costs no extra promise.
 */
export class RoutingPipeline {
  readonly #d: PipelineDeps;
  readonly #shadower: Shadower;
  #warnedNoProvider = false;

  constructor(deps: PipelineDeps) {
    this.#d = deps;
    this.#shadower = new Shadower({
      metrics: deps.metrics,
      log: deps.log,
      random: deps.random,
      promptBlocks: deps.promptBlocks,
    });
  }

  /**
   * `path` may carry a query string (policies match on the path without it).
   * `eligible` narrows the candidates further (the EPP's subset hint from the proxy in front).
   */
  route(
    request: InferenceRequest,
    path: string,
    headers: IncomingHttpHeaders,
    requestId: string,
    clientAddress?: string,
    eligible?: (worker: Worker) => boolean,
  ): Routed | Promise<Routed> {
    const started = performance.now();
    const sessionKey = this.#d.honourSession === false ? undefined : first(headers[this.#d.sessionHeader]);
    const q = path.indexOf('?');
    const input: PolicyInput = {
      request,
      model: request.model,
      path: q === -1 ? path : path.slice(0, q),
      headers,
      promptTokens: request.estimatedPromptTokens,
      sessionKey,
      clientAddress,
    };
    if (this.#d.policy.needsExactTokens) {
      const pending = this.#blocks(request, requestId, 'policy');
      if (pending)
        return pending.then((blocks) =>
          this.#select(
            blocks ? { ...input, promptTokens: blocks.tokenCount } : input,
            path,
            requestId,
            blocks,
            started,
            eligible,
          ),
        );
    }
    return this.#select(input, path, requestId, undefined, started, eligible);
  }

  /**
   * Schedules the shadow strategies of the request's selection, if it is sampled.
   * Call after the request was forwarded; the work runs on a later tick.
   */
  shadow(routed: Routed, ticket: LoadTicket): void {
    const set = routed.selection.shadow;
    if (!set) return;
    this.#shadower.maybeRun({
      set,
      ctx: routed.ctx,
      request: routed.request,
      strategy: routed.strategy.name,
      worker: routed.worker,
      candidates: routed.candidates,
      ticket,
    });
  }

  /** `/debug/experiments`: every experiment's arms and the shadow tallies. */
  summary(): Record<string, unknown> {
    return { ...(this.#d.policy.summary?.() ?? { experiments: [] }), shadow: this.#shadower.summary() };
  }

  #select(
    input: PolicyInput,
    path: string,
    requestId: string,
    blocks: PromptBlocks | undefined,
    started: number,
    eligible?: (worker: Worker) => boolean,
  ): Routed | Promise<Routed> {
    const selection = this.#d.policy.select(input);
    // Announced at once, so other replicas hold their later arrivals while this one tokenizes.
    const turn = this.#d.decisionTurn?.(this.#d.now());
    try {
      const all = this.#candidates(input.model, selection, eligible);
      const split = this.#d.split?.(input.model, selection.pool, all);
      const candidates = split ? split.decode : all;
      // The split decides on uncached prefill tokens, so it needs the prompt's blocks whatever the strategy.
      const tokenizing =
        (selection.strategy.needsPromptBlocks || split) && !blocks
          ? this.#blocks(input.request, requestId, split ? 'disaggregation' : selection.strategy.name)
          : undefined;
      const decide = (b: PromptBlocks | undefined, from: number) => {
        try {
          return this.#choose(selection, input, path, requestId, candidates, split?.prefill, b, from);
        } finally {
          turn?.done();
        }
      };
      const waiting = tokenizing ? undefined : turn?.wait();
      if (!tokenizing && !waiting) return decide(blocks, started);
      return (tokenizing ?? Promise.resolve(blocks))
        .then(async (b) => {
          const wait = tokenizing ? turn?.wait() : waiting;
          if (!wait) return decide(b, started);
          const t0 = performance.now();
          await wait;
          // The decision-time metric is the routing work's, not the wait for other replicas.
          return decide(b, started + (performance.now() - t0));
        })
        .catch((err: unknown) => {
          turn?.done();
          selection.armStats?.end(err instanceof GatewayError ? err.status : 500);
          throw err;
        });
    } catch (err) {
      turn?.done();
      selection.armStats?.end(err instanceof GatewayError ? err.status : 500);
      throw err;
    }
  }

  /** Prompt blocks, or undefined (no provider) so the caller stays synchronous; a failure routes without blocks. */
  #blocks(
    request: InferenceRequest,
    requestId: string,
    forWhat: string,
  ): Promise<PromptBlocks | undefined> | undefined {
    const provider = this.#d.promptBlocks;
    if (!provider) {
      if (!this.#warnedNoProvider) {
        this.#warnedNoProvider = true;
        this.#d.log.warn(
          { for: forWhat },
          'prompt tokens are needed but no PromptBlocksProvider is configured; using estimates',
        );
      }
      return undefined;
    }
    return provider(request.body, request.model, request.kind).catch((err: unknown) => {
      // The provider's own answer for the client (a prompt over the context length), not a failure.
      if (err instanceof GatewayError) throw err;
      this.#d.log.warn({ err, requestId }, 'prompt tokenization failed; routing without blocks');
      return undefined;
    });
  }

  #candidates(model: string, selection: Selection, eligible?: (worker: Worker) => boolean): readonly Worker[] {
    const adapterWorkers = this.#d.adapters?.candidates(model);
    const all = adapterWorkers ?? this.#d.fleet.candidates(model);
    const pooled = selection.pool ? selection.pool.filter(all) : all;
    const candidates = eligible ? pooled.filter(eligible) : pooled;
    if (candidates.length > 0) return candidates;
    if (adapterWorkers !== undefined && !this.#d.adapters!.loadedAnywhere(model)) {
      throw new GatewayError(
        404,
        `The LoRA adapter '${model}' is not loaded on any worker`,
        'not_found_error',
        'model_not_found',
        'model',
      );
    }
    if (adapterWorkers === undefined && !this.#d.fleet.servesModel(model)) {
      throw new GatewayError(404, `The model '${model}' does not exist`, 'not_found_error', 'model_not_found', 'model');
    }
    const where =
      (selection.pool ? ` in pool '${selection.pool.name}' (${selection.rule})` : '') +
      (eligible ? ' among the eligible endpoints' : '');
    throw new GatewayError(
      503,
      `no healthy worker${where} serves model '${model}'`,
      'service_unavailable',
      'no_healthy_worker',
      null,
      true,
    );
  }

  #choose(
    selection: Selection,
    input: PolicyInput,
    path: string,
    requestId: string,
    candidates: readonly Worker[],
    prefillCandidates: readonly Worker[] | undefined,
    blocks: PromptBlocks | undefined,
    started: number,
  ): Routed {
    const { strategy } = selection;
    const ctx: RouteContext = {
      requestId,
      model: input.model,
      path,
      headers: input.headers,
      sessionKey: input.sessionKey,
      promptTokens: blocks?.tokenCount ?? input.promptTokens,
      blocks,
      random: this.#d.random,
      now: this.#d.now,
    };
    const decision = strategy.choose(ctx, candidates);
    const worker = this.#d.fleet.get(decision.worker.id);
    if (!worker || !worker.healthy) {
      throw new GatewayError(
        500,
        `strategy '${strategy.name}' chose '${decision.worker.id}', which is not an available worker`,
        'upstream_error',
        'strategy_error',
      );
    }
    this.#d.metrics.decision(strategy.name, (performance.now() - started) / 1000);
    if (selection.armStats && blocks && decision.predictedCachedBlocks !== undefined)
      selection.armStats.predictedCachedTokens += decision.predictedCachedBlocks * blocks.blockSize;
    return { ctx, decision, strategy, worker, candidates, prefillCandidates, selection, request: input.request };
  }
}
