import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Fleet, Worker } from '../../fleet/fleet.js';
import type { Passthrough } from '../../proxy/passthrough.js';
import type { ResponseObserver } from '../../proxy/usage-sniffer.js';
import type { Routed } from '../../routing/pipeline.js';
import { createLeastLoadStrategy } from '../../routing/strategies/least-load.js';
import { parseInference, type InferenceRequest } from '../request.js';
import { sendError } from '../errors.js';
import { parseMessages } from './messages.js';
import { parsePooling } from './pooling.js';
import type { ToolAffinity } from '../../fleet/tools/tool-sessions.js';
import { parseResponses, ResponseRecorder, workerGone, type ResponseStore } from './responses.js';
import { ANSWERED_BY, parseTokenize, type LocalTokenizers, type TokenizeConfig } from './tokenize.js';

/** What a routed route hands the front: the request, and how its choice of worker is steered. */
export interface Prepared {
  readonly request: InferenceRequest;
  /** Must run on this worker (a stored response's conversation lives there). */
  readonly pinned?: { readonly worker: string; readonly responseId: string } | undefined;
  /** No decode phase: the least-loaded candidate, whatever the configured strategy. */
  readonly byLoad?: boolean;
  /** Chat and completions only: the P/D hook rewrites their bodies. */
  readonly disagg?: boolean;
  /** Wraps the request's observer (the Responses route learns the stored response id from the answer). */
  readonly observe?: (inner: ResponseObserver) => ResponseObserver & { worker: string };
  /** The gateway's own answer (a JSON body), or undefined when a worker must answer after all. */
  readonly answer?: (() => Promise<Record<string, unknown> | undefined>) | undefined;
  /** Extra response headers when a worker answers. */
  readonly headers?: Record<string, string>;
}

/** What the routes need beyond the body: the stored responses, and the tokenizers the gateway answers with. */
export interface RouteDeps {
  readonly store: ResponseStore;
  readonly tokenizers?: LocalTokenizers | undefined;
  readonly tokenize: TokenizeConfig;
  /** The models the fleet serves: a body without `model` means the only one. */
  readonly fleetModels: () => ReadonlySet<string>;
}

export interface RoutedRoute {
  /** The `route` metric label. */
  readonly route: string;
  readonly parse: (raw: Buffer) => Prepared;
}

const POOLING: Record<string, string> = {
  '/v1/embeddings': 'embeddings',
  '/pooling': 'pooling',
  '/v1/pooling': 'pooling',
  '/score': 'score',
  '/v1/score': 'score',
  '/rerank': 'rerank',
  '/v1/rerank': 'rerank',
  '/v2/rerank': 'rerank',
};

/** The POST routes the gateway routes itself; every other path is the pass-through's. */
export function routedRoute(path: string, deps: RouteDeps): RoutedRoute | undefined {
  const { store } = deps;
  switch (path) {
    case '/v1/chat/completions':
      return { route: 'chat', parse: (raw) => ({ request: parseInference(raw, 'chat'), disagg: true }) };
    case '/v1/completions':
      return { route: 'completions', parse: (raw) => ({ request: parseInference(raw, 'completion'), disagg: true }) };
    case '/v1/responses':
      return {
        route: 'responses',
        parse: (raw) => {
          const r = parseResponses(raw, store);
          return {
            request: r.request,
            pinned: r.pinned,
            observe: (inner) => new ResponseRecorder(inner, store, r.messages),
          };
        },
      };
    case '/v1/messages':
      return { route: 'messages', parse: (raw) => ({ request: parseMessages(raw) }) };
    case '/tokenize':
    case '/detokenize': {
      const route = path === '/tokenize' ? 'tokenize' : 'detokenize';
      return {
        route,
        parse: (raw) => {
          const t = parseTokenize(raw, route, deps.tokenizers, deps.tokenize, deps.fleetModels);
          return { request: t.request, byLoad: true, answer: t.answer, headers: { [ANSWERED_BY]: 'worker' } };
        },
      };
    }
  }
  const pooling = POOLING[path];
  if (pooling) return { route: pooling, parse: (raw) => ({ request: parsePooling(raw, pooling), byLoad: true }) };
  return undefined;
}

/** The owner of a pinned request, or the 4xx saying it is gone. */
export function ownerOf(fleet: Fleet, prepared: Prepared): Worker | undefined {
  const pin = prepared.pinned;
  if (pin === undefined) return undefined;
  const owner = fleet.get(pin.worker);
  if (!owner || !owner.healthy) throw workerGone(pin.responseId, pin.worker, 'previous_response_id');
  return owner;
}

const byLoadStrategy = createLeastLoadStrategy();

/** Applies the route's steering to the pipeline's choice: a pinned owner, or the least-loaded candidate. */
export function steer(fleet: Fleet, routed: Routed, prepared: Prepared, owner: Worker | undefined): Routed {
  if (owner) {
    // The strategy's prediction holds only if it chose the owner too.
    const predicted = routed.worker.id === owner.id ? routed.decision.predictedCachedBlocks : undefined;
    return {
      ...routed,
      worker: owner,
      decision: {
        worker: owner,
        explain: { rule: 'previous_response_id is stored on this worker' },
        ...(predicted !== undefined ? { predictedCachedBlocks: predicted } : {}),
      },
    };
  }
  if (!prepared.byLoad) return routed;
  const decision = byLoadStrategy.choose(routed.ctx, routed.candidates);
  const worker = fleet.get(decision.worker.id) ?? routed.worker;
  return { ...routed, worker, decision, strategy: byLoadStrategy };
}

/**
 * A tool-result turn goes back to the worker that served the turn ending in
 * the tool call, where its prefix is (on GPU, or in host memory the engine
 * loads it back from), when that worker is among the candidates; otherwise the
 * strategy's choice stands. The strategy's explain is kept under `strategy`.
 */
export function steerToHolder(
  fleet: Fleet,
  routed: Routed,
  affinity: ToolAffinity,
): { routed: Routed; outcome: 'kept' | 'moved' | 'lost' } {
  const explain = { rule: 'tool-call follow-up: back to the worker holding the session prefix', toolSession: affinity };
  if (routed.worker.id === affinity.worker)
    return {
      routed: {
        ...routed,
        decision: { ...routed.decision, explain: { ...explain, strategy: routed.decision.explain } },
      },
      outcome: 'kept',
    };
  const holder = fleet.get(affinity.worker);
  if (!holder || !holder.healthy || !routed.candidates.some((c) => c.id === holder.id))
    return { routed, outcome: 'lost' };
  const score = routed.decision.candidates?.find((c) => c.worker === holder.id);
  const cached = score?.terms.overlapBlocks;
  return {
    routed: {
      ...routed,
      worker: holder,
      decision: {
        worker: holder,
        explain: { ...explain, strategyChose: routed.worker.id, strategy: routed.decision.explain },
        ...(cached !== undefined ? { predictedCachedBlocks: Math.floor(cached) } : {}),
        ...(routed.decision.candidates ? { candidates: routed.decision.candidates } : {}),
      },
    },
    outcome: 'moved',
  };
}

const RESPONSE_BY_ID = /^\/v1\/responses\/([^/]+)(?:\/cancel)?$/;

/**
 * `GET|DELETE /v1/responses/{id}` and `POST /v1/responses/{id}/cancel` go to
 * the worker that stored the response; a known id whose worker is gone is a
 * 404 saying so; an id the gateway never saw goes through the pass-through.
 * Returns false when the path is not one of these.
 */
export function serveStoredResponse(
  req: IncomingMessage,
  res: ServerResponse,
  path: string,
  store: ResponseStore,
  fleet: Fleet,
  passthrough: Passthrough,
): boolean {
  const m = RESPONSE_BY_ID.exec(path);
  if (!m) return false;
  const id = decodeURIComponent(m[1]!);
  const stored = store.get(id);
  if (!stored) {
    passthrough.handle(req, res);
    return true;
  }
  const owner = fleet.get(stored.worker);
  if (!owner || !owner.healthy) {
    sendError(res, workerGone(id, stored.worker, null));
    return true;
  }
  if (req.method === 'DELETE')
    res.once('finish', () => {
      if (res.statusCode === 200) store.delete(id);
    });
  passthrough.handle(req, res, owner);
  return true;
}
