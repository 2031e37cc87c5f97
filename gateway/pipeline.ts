import type { IncomingHttpHeaders } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { GatewayError } from './errors.js';
import type { Fleet, Worker } from './fleet.js';
import type { GatewayMetrics } from './metrics.js';
import type { Policy } from './policy.js';
import type { InferenceKind, InferenceRequest } from './request.js';
import type { Decision, PromptBlocks, RouteContext, Strategy } from './strategies/strategy.js';

/**
 * Tokenizes and hashes a prompt into KV blocks, for strategies that set
 * `needsPromptBlocks`. Resolves undefined when the prompt cannot be tokenized
 * (unknown model, no tokenizer); the strategy then routes without blocks.
 */
export type PromptBlocksProvider = (body: Record<string, unknown>, model: string, kind: InferenceKind) => Promise<PromptBlocks | undefined>;

export interface Routed {
  readonly ctx: RouteContext;
  readonly decision: Decision;
  readonly strategy: Strategy;
  readonly worker: Worker;
  readonly candidates: readonly Worker[];
}

export interface PipelineDeps {
  fleet: Fleet;
  policy: Policy;
  metrics: GatewayMetrics;
  log: Logger;
  sessionHeader: string;
  promptBlocks?: PromptBlocksProvider | undefined;
  random: () => number;
  now: () => number;
}

/**
 * request -> policy -> availability (the fleet) -> prompt blocks if asked -> strategy.
 * Knows nothing of HTTP transport; `route` is synchronous unless the strategy
 * needs prompt blocks, so the common path costs no extra promise.
 */
export class RoutingPipeline {
  readonly #d: PipelineDeps;
  #warnedNoProvider = false;

  constructor(deps: PipelineDeps) {
    this.#d = deps;
  }

  route(request: InferenceRequest, path: string, headers: IncomingHttpHeaders, requestId: string): Routed | Promise<Routed> {
    const started = performance.now();
    const strategy = this.#d.policy.select(request, headers);
    const candidates = this.#candidates(request.model);
    if (strategy.needsPromptBlocks) {
      const provider = this.#d.promptBlocks;
      if (provider) {
        return provider(request.body, request.model, request.kind).then(
          (blocks) => this.#choose(strategy, request, path, headers, requestId, candidates, blocks, started),
          (err: unknown) => {
            this.#d.log.warn({ err, requestId }, 'prompt tokenization failed; routing without blocks');
            return this.#choose(strategy, request, path, headers, requestId, candidates, undefined, started);
          },
        );
      }
      if (!this.#warnedNoProvider) {
        this.#warnedNoProvider = true;
        this.#d.log.warn({ strategy: strategy.name }, 'strategy needs prompt blocks but no PromptBlocksProvider is configured');
      }
    }
    return this.#choose(strategy, request, path, headers, requestId, candidates, undefined, started);
  }

  #candidates(model: string): readonly Worker[] {
    const candidates = this.#d.fleet.candidates(model);
    if (candidates.length > 0) return candidates;
    if (!this.#d.fleet.servesModel(model)) {
      throw new GatewayError(404, `The model '${model}' does not exist`, 'not_found_error', 'model_not_found', 'model');
    }
    throw new GatewayError(503, `no healthy worker serves model '${model}'`, 'service_unavailable', 'no_healthy_worker', null, true);
  }

  #choose(
    strategy: Strategy, request: InferenceRequest, path: string, headers: IncomingHttpHeaders, requestId: string,
    candidates: readonly Worker[], blocks: PromptBlocks | undefined, started: number,
  ): Routed {
    const session = headers[this.#d.sessionHeader];
    const ctx: RouteContext = {
      requestId,
      model: request.model,
      path,
      headers,
      sessionKey: Array.isArray(session) ? session[0] : session,
      promptTokens: blocks?.tokenCount ?? request.estimatedPromptTokens,
      blocks,
      random: this.#d.random,
      now: this.#d.now,
    };
    const decision = strategy.choose(ctx, candidates);
    const worker = this.#d.fleet.get(decision.worker.id);
    if (!worker || !worker.healthy) {
      throw new GatewayError(500, `strategy '${strategy.name}' chose '${decision.worker.id}', which is not an available worker`, 'upstream_error', 'strategy_error');
    }
    this.#d.metrics.decision(strategy.name, (performance.now() - started) / 1000);
    return { ctx, decision, strategy, worker, candidates };
  }
}
