import type { IncomingHttpHeaders } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { Counter } from 'prom-client';
import type { ClientAnswer } from '../flow/answer.js';
import type { FlowControl } from '../flow/flow.js';
import type { Admission } from '../front/overload.js';
import { GatewayError } from '../front/errors.js';
import { parseInference, type InferenceKind } from '../front/request.js';
import type { Fleet, LoadTicket, Worker } from '../fleet/fleet.js';
import { requestBlocks } from '../fleet/load.js';
import type { GatewayMetrics } from '../ops/metrics.js';
import type { RoutingPipeline, Routed } from '../routing/pipeline.js';
import { RequestOutcome, type ResponseObserver } from '../proxy/usage-sniffer.js';

export const DESTINATION = 'x-gateway-destination-endpoint';
export const SUBSET = 'x-gateway-destination-endpoint-subset';
export const SERVED = 'x-gateway-destination-endpoint-served';
export const LB_NAMESPACE = 'envoy.lb';
/** The protocol's namespace for the subset hint (v1.0); older proxies put it under `envoy.lb`, still read. */
export const SUBSET_NAMESPACE = 'envoy.lb.subset_hint';
/** Fallback endpoints offered after the chosen one. */
const FALLBACKS = 2;

export interface PickerDeps {
  readonly fleet: Fleet;
  readonly pipeline: RoutingPipeline;
  readonly metrics: GatewayMetrics;
  readonly log: Logger;
  readonly blockSize: number;
  readonly maxBodyBytes: number;
  /** Flow control (`flow.enabled`): may hold a pick while every candidate is saturated, or shed it (429). */
  readonly flow?: FlowControl | undefined;
  /** The gateway-wide concurrency bound (`server.overload`), as the proxy routes apply it. */
  readonly admission?: Admission | undefined;
}

/** Why the proxy's served endpoint was not the picked one, as `kvgate_epp_served_elsewhere_total{kind}` counts it. */
type Elsewhere = 'fallback' | 'other_worker' | 'unknown';

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
  /** The picked worker, until the proxy says another one served the request (`served`). */
  worker: Worker;
  readonly strategy: string;
  readonly cachedBlocks: number | undefined;
  /** What flow control did (`x-kvgate-flow`), when it is on. */
  flowNote?: string;
  ticket: LoadTicket;
  /** Another worker than the picked one served it: load, TTFT and duration went to that one. */
  moved: boolean;
  outcome: ResponseObserver | undefined;
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
  readonly #elsewhere: Counter<'kind'>;

  constructor(deps: PickerDeps) {
    this.#d = deps;
    const registry = deps.metrics.registry;
    this.#elsewhere =
      (registry.getSingleMetric('kvgate_epp_served_elsewhere_total') as Counter<'kind'> | undefined) ??
      new Counter({
        name: 'kvgate_epp_served_elsewhere_total',
        help: 'EPP requests the proxy reported served by another endpoint than the picked one: one of the offered fallbacks, another known worker, or an endpoint not in the fleet',
        labelNames: ['kind'],
        registers: [registry],
      });
  }

  get maxBodyBytes(): number {
    return this.#d.maxBodyBytes;
  }

  /** An inference path (chat, completions) is routed by its body; anything else goes to any eligible worker. */
  isInference(path: string): boolean {
    return kindOf(path) !== undefined;
  }

  /**
   * Admission before the body, as in proxy mode: true, or a promise of it after a wait; false when it
   * answered 429 on `answer` (or the stream went while waiting). The slot is held until `answer` closes.
   */
  admit(answer: ClientAnswer, requestId: string): boolean | Promise<boolean> {
    return this.#d.admission?.acquire(answer, { 'x-request-id': requestId }) ?? true;
  }

  /** The pick, or null when flow control shed the request (answered on `answer`) or it left while held. */
  async pick(
    path: string,
    headers: IncomingHttpHeaders,
    body: Buffer | undefined,
    subset: ReadonlySet<string> | undefined,
    answer: ClientAnswer,
    requestId: string,
  ): Promise<Pick | null> {
    const started = performance.now();
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
        moved: false,
        outcome: undefined,
        arm: 'none',
        started,
      };
    }
    const request = parseInference(body, kind);
    let routed = this.#d.pipeline.route(request, path, headers, requestId, undefined, eligible);
    if (routed instanceof Promise) routed = await routed;
    // --- flow control, as in proxy mode: the stream stays open while the request is held ---
    let pass = this.#d.flow?.gate(routed, headers, answer, requestId);
    if (pass instanceof Promise) pass = await pass;
    if (pass === null) return null;
    if (pass) routed = pass.routed;
    const { ctx, decision, worker, strategy } = routed;
    // As the proxy does: the uncached part is what the worker's prefill still has to compute.
    const blockSize = ctx.blocks?.blockSize ?? this.#d.blockSize;
    const ticket = this.#d.fleet.start(
      worker,
      ctx.promptTokens,
      requestBlocks(ctx.promptTokens, request.maxTokens, this.#d.blockSize),
      {
        uncachedTokens: ctx.promptTokens - (decision.predictedCachedBlocks ?? 0) * blockSize,
        hashes: ctx.blocks?.hashes,
        promptBlocks: Math.ceil(ctx.promptTokens / blockSize),
      },
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
    const outcome = new RequestOutcome(this.#d.metrics, strategy.name, arm, armStats, started);
    const p: Pick = {
      endpoints: [endpointOf(worker), ...fallbacks(routed)],
      requestId,
      worker,
      strategy: strategy.name,
      cachedBlocks: decision.predictedCachedBlocks,
      ticket,
      moved: false,
      outcome,
      arm,
      started,
    };
    if (pass) {
      p.outcome = pass.observe(outcome, () => p.moved);
      p.flowNote = pass.note;
    }
    return p;
  }

  /**
   * The proxy says `endpoint` served the request (a fallback after the pick failed): the load moves
   * there, so that worker's in-flight count, TTFT and duration carry it. An endpoint outside the
   * fleet is only counted and logged; the load stays where it was taken.
   */
  served(p: Pick, endpoint: string): void {
    if (endpoint === endpointOf(p.worker)) return;
    const worker = this.#d.fleet.workers.find((w) => endpointOf(w) === endpoint);
    const kind: Elsewhere = !worker ? 'unknown' : p.endpoints.includes(endpoint) ? 'fallback' : 'other_worker';
    this.#elsewhere.inc({ kind });
    this.#d.log.info(
      { requestId: p.requestId, picked: p.endpoints[0], served: endpoint, kind },
      'epp: the proxy served another endpoint',
    );
    if (!worker || p.ticket.phase === 'done') return;
    const { promptTokens, blocks, phase } = p.ticket;
    this.#d.fleet.finish(p.ticket);
    p.ticket = this.#d.fleet.start(worker, promptTokens, blocks);
    if (phase === 'decode') this.#d.fleet.firstToken(p.ticket);
    p.worker = worker;
    p.moved = true;
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
    // Chosen once: a strategy breaks ties at random, so asking again per candidate could match none.
    const chosen = routed.strategy.choose(routed.ctx, rest).worker.id;
    const next = rest.find((w) => w.id === chosen);
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
