import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { GatewayError } from '../front/errors.js';
import { parseInference, type InferenceKind } from '../front/request.js';
import type { Fleet, LoadTicket, Worker } from '../fleet/fleet.js';
import { requestBlocks } from '../fleet/load.js';
import type { GatewayMetrics } from '../ops/metrics.js';
import type { RoutingPipeline, Routed } from '../routing/pipeline.js';
import { RequestOutcome } from '../proxy/usage-sniffer.js';

export const DESTINATION = 'x-gateway-destination-endpoint';
export const SUBSET = 'x-gateway-destination-endpoint-subset';
export const SERVED = 'x-gateway-destination-endpoint-served';
export const LB_NAMESPACE = 'envoy.lb';
/** Fallback endpoints offered after the chosen one. */
const FALLBACKS = 2;

export interface PickerDeps {
  readonly fleet: Fleet;
  readonly pipeline: RoutingPipeline;
  readonly metrics: GatewayMetrics;
  readonly log: Logger;
  readonly blockSize: number;
  readonly maxBodyBytes: number;
}

/** `ip:port` of a worker, as the proxy in front addresses it. */
export function endpointOf(worker: Worker): string {
  const u = new URL(worker.url);
  const port = u.port || (u.protocol === 'https:' ? '443' : '80');
  return `${u.hostname}:${port}`;
}

/** A picked request: the endpoints to offer and the load it holds until the response ends. */
export interface Pick {
  readonly endpoints: string[];
  readonly requestId: string;
  readonly worker: Worker;
  readonly strategy: string;
  readonly cachedBlocks: number | undefined;
  readonly ticket: LoadTicket;
  readonly outcome: RequestOutcome | undefined;
  readonly arm: string;
  /** `performance.now()` when the request's headers arrived at the picker. */
  readonly started: number;
}

const KINDS: Record<string, InferenceKind> = { '/v1/chat/completions': 'chat', '/v1/completions': 'completion' };

/**
 * Routes one request for the EPP through the same pipeline as the proxy mode
 * (policies, experiments, strategies, index) and takes the load ticket the
 * proxy mode would; only the forwarding is left to the proxy in front.
 */
export class Picker {
  readonly #d: PickerDeps;

  constructor(deps: PickerDeps) {
    this.#d = deps;
  }

  get maxBodyBytes(): number {
    return this.#d.maxBodyBytes;
  }

  /** An inference path (chat, completions) is routed by its body; anything else goes to any eligible worker. */
  isInference(path: string): boolean {
    return kindOf(path) !== undefined;
  }

  async pick(
    path: string,
    headers: IncomingHttpHeaders,
    body: Buffer | undefined,
    subset: ReadonlySet<string> | undefined,
  ): Promise<Pick> {
    const started = performance.now();
    const requestId = (headers['x-request-id'] as string | undefined) ?? randomUUID();
    const eligible = subset ? (w: Worker) => subset.has(endpointOf(w)) : undefined;
    const kind = kindOf(path);
    if (kind === undefined || body === undefined) {
      const worker = this.#d.fleet.healthy.find((w) => !eligible || eligible(w));
      if (!worker) throw noEndpoint(subset !== undefined);
      const ticket = this.#d.fleet.start(worker, 0, 0);
      return {
        endpoints: [endpointOf(worker)],
        requestId,
        worker,
        strategy: 'none',
        cachedBlocks: undefined,
        ticket,
        outcome: undefined,
        arm: 'none',
        started,
      };
    }
    const request = parseInference(body, kind);
    let routed = this.#d.pipeline.route(request, path, headers, requestId, undefined, eligible);
    if (routed instanceof Promise) routed = await routed;
    const { ctx, decision, worker, strategy } = routed;
    const ticket = this.#d.fleet.start(
      worker,
      ctx.promptTokens,
      requestBlocks(ctx.promptTokens, request.maxTokens, this.#d.blockSize),
    );
    strategy.onRouted?.(ctx, decision);
    const { arm, armStats } = routed.selection;
    this.#d.metrics.routed(
      strategy.name,
      ctx.promptTokens,
      ctx.blocks ? (decision.predictedCachedBlocks ?? 0) * ctx.blocks.blockSize : undefined,
      arm,
    );
    this.#d.pipeline.shadow(routed, ticket);
    return {
      endpoints: [endpointOf(worker), ...fallbacks(routed)],
      requestId,
      worker,
      strategy: strategy.name,
      cachedBlocks: decision.predictedCachedBlocks,
      ticket,
      outcome: new RequestOutcome(this.#d.metrics, strategy.name, arm, armStats, started),
      arm,
      started,
    };
  }

  /** The first response body byte: the request moves from prefill to decode on its worker. */
  firstByte(p: Pick): void {
    this.#d.fleet.firstToken(p.ticket);
    this.#d.metrics.ttft(p.strategy, p.worker.id, (performance.now() - p.started) / 1000, p.arm);
  }

  /** The response ended (`status`), or the stream broke (499). Releases the load; idempotent via the ticket. */
  finish(p: Pick, status: number): void {
    if (p.ticket.phase === 'done') return;
    this.#d.fleet.finish(p.ticket);
    p.outcome?.end(status);
    this.#d.metrics.request('epp', p.worker.id, p.strategy, status, p.arm);
    this.#d.metrics.duration(p.strategy, p.worker.id, (performance.now() - p.started) / 1000, p.arm);
  }
}

function kindOf(path: string): InferenceKind | undefined {
  const q = path.indexOf('?');
  return KINDS[q === -1 ? path : path.slice(0, q)];
}

/** Ordered fallbacks in the strategy's own terms: the choice again without the workers already offered. */
function fallbacks(routed: Routed): string[] {
  const out: string[] = [];
  const offered = new Set<Worker>([routed.worker]);
  for (let i = 0; i < FALLBACKS; i++) {
    const rest = routed.candidates.filter((w) => !offered.has(w) && w.available);
    if (rest.length === 0) break;
    const next = routed.candidates.find((w) => w.id === routed.strategy.choose(routed.ctx, rest).worker.id);
    if (!next || offered.has(next)) break;
    offered.add(next);
    out.push(endpointOf(next));
  }
  return out;
}

function noEndpoint(hinted: boolean): GatewayError {
  return new GatewayError(
    503,
    hinted ? 'no healthy worker among the eligible endpoints' : 'no healthy worker',
    'service_unavailable',
    'no_healthy_worker',
    null,
    true,
  );
}
