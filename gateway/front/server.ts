import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { z } from 'zod';
import { GatewayError, sendError } from './errors.js';
import type { Fleet } from '../fleet/fleet.js';
import { requestBlocks } from '../fleet/load.js';
import { forward, type Transport } from '../proxy/forward.js';
import { clientRequestId, upstreamRequestHeaders } from '../proxy/headers.js';
import type { GatewayMetrics } from '../ops/metrics.js';
import { fleetModels, retrieveModel } from './models.js';
import { Admission, overloadConfigSchema } from './overload.js';
import type { Passthrough } from '../proxy/passthrough.js';
import type { RoutingPipeline } from '../routing/pipeline.js';
import { ADMIN_TOKEN_HEADER } from '../routing/policies/overrides.js';
import { RequestOutcome } from '../proxy/usage-sniffer.js';
import { readBody, requireJsonContentType } from './request.js';
import { passthroughConfigSchema } from '../proxy/passthrough-routes.js';
import { responsesConfigSchema, ResponseStore } from './routes/responses.js';
import { ownerOf, routedRoute, serveStoredResponse, steer, steerToHolder, type Prepared } from './routes/routed.js';
import { ANSWERED_BY, tokenizeConfigSchema, type LocalTokenizers } from './routes/tokenize.js';
import { isToolFollowUp, sessionKeyOf, type ToolSessions } from '../fleet/tools/tool-sessions.js';
import { rerouter } from '../proxy/retry.js';
import type { DisaggHook } from '../disagg/two-leg.js';
import type { FlowControl, FlowPass } from '../flow/flow.js';
import { requeryAsk, requeryConfigSchema, runRequery } from './requery.js';

/** The public listener. */
export const serverConfigSchema = z.strictObject({
  host: z.string().min(1).default('0.0.0.0'),
  port: z.number().int().min(0).max(65535).default(8080),
  /** Largest accepted inference body; long prompts and base64 images are big. */
  maxBodyBytes: z
    .number()
    .int()
    .min(1024)
    .default(32 * 1024 * 1024),
  /** Idle keep-alive of client connections. */
  keepAliveTimeoutMs: z.number().int().min(0).default(65_000),
  /** Slow clients (slowloris): the request head must arrive within this (gateway/front/client-limits.ts). */
  headersTimeoutMs: z.number().int().min(1).default(30_000),
  /** The whole request, body included, must arrive within this; 0 disables it. Responses (long streams) are not limited. */
  requestTimeoutMs: z.number().int().min(0).default(60_000),
  /** Largest request line plus headers; beyond it 431. */
  maxHeaderBytes: z
    .number()
    .int()
    .min(1024)
    .default(16 * 1024),
  /** Concurrency bound and wait queue for inference requests; 429 beyond them. */
  overload: overloadConfigSchema.prefault({}),
  /** On SIGTERM, how long in-flight requests (streams included) may run before they are cut (gateway/ops/lifecycle.ts). */
  drainTimeoutMs: z.number().int().min(0).default(30_000),
  /** Which engine routes the pass-through forwards; state-changing ones are refused unless listed here. */
  passthrough: passthroughConfigSchema.prefault({}),
  /** Which worker stored which Responses API response (gateway/front/routes/responses.ts). */
  responses: responsesConfigSchema.prefault({}),
  /** `kvgate_requery` rounds run by the gateway (gateway/front/requery.ts); refused unless enabled. */
  requery: requeryConfigSchema.prefault({}),
  /** Who answers `/tokenize` and `/detokenize` (gateway/front/routes/tokenize.ts). */
  tokenize: tokenizeConfigSchema.prefault({}),
});
export type ServerConfig = z.infer<typeof serverConfigSchema>;

export interface FrontDeps {
  readonly config: ServerConfig;
  readonly fleet: Fleet;
  readonly pipeline: RoutingPipeline;
  readonly transport: Transport;
  readonly passthrough: Passthrough;
  readonly metrics: GatewayMetrics;
  readonly log: Logger;
  readonly blockSize: number;
  /** Prefill/decode disaggregation (gateway/disagg/): takes the requests of pools that have prefill workers. */
  readonly disagg?: DisaggHook | undefined;
  /** Flow control (gateway/flow/): priorities, tenant fairness, SLO-aware admission; absent when `flow.enabled` is off. */
  readonly flow?: FlowControl | undefined;
  /** Local tokenizers, for answering `/tokenize` and `/detokenize` without a worker. */
  readonly tokenizers?: LocalTokenizers | undefined;
  /** Tool-call aware KV retention (gateway/fleet/tools/); absent when `toolRetention.enabled` is off. */
  readonly tools?: ToolSessions | undefined;
  /** The gateway-wide concurrency bound, shared with the EPP front; built from `config.overload` when absent. */
  readonly admission?: Admission | undefined;
}

/** `GET /v1/models/{id}`: answered from the fleet's model cards, never passed through. */
const MODEL_PREFIX = '/v1/models/';

/**
 * The OpenAI-compatible front: routes inference requests, answers health,
 * readiness, models and metrics itself, and passes per-request engine routes
 * through (gateway/proxy/passthrough-routes.ts).
 */
export function createFrontHandler(d: FrontDeps): (req: IncomingMessage, res: ServerResponse) => void {
  const admission = d.admission ?? new Admission(d.config.overload, d.metrics.registry);
  const store = new ResponseStore(d.config.responses);
  const routeDeps = { store, tokenizers: d.tokenizers, tokenize: d.config.tokenize, fleetModels: () => d.fleet.models };
  const inference = async (
    req: IncomingMessage,
    res: ServerResponse,
    parse: (raw: Buffer) => Prepared,
    route: string,
    path: string,
  ): Promise<void> => {
    const started = performance.now();
    const requestId = clientRequestId(req.headers) ?? randomUUID();
    // Admission comes before the body is read, so a refused request costs no memory.
    let admitted = admission.acquire(res, { 'x-request-id': requestId });
    if (admitted instanceof Promise) admitted = await admitted;
    if (!admitted) return;
    let strategy = 'none';
    try {
      const raw = await readBody(req, d.config.maxBodyBytes);
      // After the body, not before as vLLM does: a broken framing is reported as such, and the connection stays usable.
      requireJsonContentType(req.headers['content-type']);
      const prepared = parse(raw);
      const { request } = prepared;
      if (prepared.answer) {
        const own = await prepared.answer();
        if (own) {
          d.metrics.request(route, 'gateway', strategy, 200);
          return json(res, 200, own, { [ANSWERED_BY]: 'gateway', 'x-request-id': requestId });
        }
      }
      const ask = requeryAsk(request.body, request.kind, d.config.requery);
      const owner = ownerOf(d.fleet, prepared);
      let piped = d.pipeline.route(request, path, req.headers, requestId, req.socket.remoteAddress);
      if (piped instanceof Promise) piped = await piped;
      let routed = steer(d.fleet, piped, prepared, owner);
      // --- tool-call retention hook (gateway/fleet/tools/): a tool result goes back to the prefix ---
      const session =
        d.tools && request.kind === 'chat'
          ? sessionKeyOf(routed.ctx.sessionKey, request.model, request.body)
          : undefined;
      if (session !== undefined && !owner && isToolFollowUp(request.body)) {
        const held = d.tools!.affinity(session);
        if (held) {
          const steered = steerToHolder(d.fleet, routed, held);
          routed = steered.routed;
          d.tools!.returned(session, steered.outcome);
        } else d.tools!.unknown();
      }
      // --- end tool-call retention hook ---
      strategy = routed.strategy.name;
      if (res.destroyed) return;
      // --- re-query hook (gateway/front/requery.ts): every round on the routed worker, aggregated ---
      if (ask) {
        routed.strategy.onRouted?.(routed.ctx, routed.decision);
        const job = { ask, body: request.body, worker: routed.worker, strategy, route, path, requestId };
        const more = { headers: req.headers, clientAddress: req.socket.remoteAddress, blockSize: d.blockSize };
        return void runRequery(d, { ...job, ...more, promptTokens: routed.ctx.promptTokens }, res);
      }
      // --- end re-query hook ---
      // --- disaggregation hook (gateway/disagg/): pools with prefill workers take the two-leg path ---
      if (prepared.disagg && d.disagg?.handles(routed))
        return void d.disagg.serve({ req, res, routed, requestId, started, route, path });
      // --- end disaggregation hook ---
      // --- flow control hook (gateway/flow/): may hold the request, move it to another worker, or shed it (429) ---
      let pass = d.flow?.gate(routed, req.headers, res, requestId);
      if (pass instanceof Promise) pass = await pass;
      if (pass === null) return;
      if (pass) routed = pass.routed;
      // --- end flow control hook ---
      const { ctx, decision, worker } = routed;
      const blocks = requestBlocks(ctx.promptTokens, request.maxTokens, d.blockSize);
      const cachedTokens = (decision.predictedCachedBlocks ?? 0) * (ctx.blocks?.blockSize ?? d.blockSize);
      const ticket = d.fleet.start(worker, ctx.promptTokens, blocks, {
        uncachedTokens: ctx.promptTokens - cachedTokens,
        hashes: ctx.blocks?.hashes,
        promptBlocks: Math.ceil(ctx.promptTokens / (ctx.blocks?.blockSize ?? d.blockSize)),
      });
      routed.strategy.onRouted?.(ctx, decision);
      const { arm, armStats } = routed.selection;
      const responseHeaders: Record<string, string> = {
        ...prepared.headers,
        'x-kvgate-worker': worker.id,
        'x-kvgate-strategy': strategy,
        'x-kvgate-arm': arm,
        'x-request-id': requestId,
      };
      if (decision.predictedCachedBlocks !== undefined)
        responseHeaders['x-kvgate-cached-blocks'] = String(decision.predictedCachedBlocks);
      if (pass) responseHeaders['x-kvgate-flow'] = pass.note;
      d.metrics.routed(
        strategy,
        ctx.promptTokens,
        ctx.blocks ? (decision.predictedCachedBlocks ?? 0) * ctx.blocks.blockSize : undefined,
        arm,
      );
      const upstreamHeaders = upstreamRequestHeaders(req.headers, requestId, request.raw.length, {
        clientAddress: req.socket.remoteAddress,
        passAuthorization: d.transport.config.passClientAuthorization,
      });
      delete upstreamHeaders[ADMIN_TOKEN_HEADER];
      const measured = flowObserved(pass, new RequestOutcome(d.metrics, strategy, arm, armStats, started));
      const outcome =
        session !== undefined
          ? d.tools!.observe(
              measured,
              session,
              { id: worker.id, url: worker.url, dataParallelRank: decision.dataParallelRank },
              request.model,
              request.body,
            )
          : measured;
      const observer = prepared.observe?.(outcome);
      forward(
        d,
        {
          worker,
          strategy,
          route,
          path,
          headers: req.headers,
          body: request.raw,
          requestId,
          ticket,
          responseHeaders,
          started,
          dataParallelRank: decision.dataParallelRank,
          // A pinned request can run nowhere else.
          reroute: owner ? undefined : rerouter(d.fleet, routed),
          arm,
          observer: observer ?? outcome,
          workerHeader: observer
            ? (w) => {
                observer.worker = w.id;
                return w.id;
              }
            : undefined,
        },
        upstreamHeaders,
        res,
      );
      d.pipeline.shadow(routed, ticket);
    } catch (err) {
      const e = err instanceof GatewayError ? err : internal(err, d.log, requestId);
      d.metrics.request(route, 'none', strategy, e.status);
      sendError(
        res,
        e,
        e.status === 413 ? { 'x-request-id': requestId, connection: 'close' } : { 'x-request-id': requestId },
      );
    }
  };

  return (req, res) => {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    const method = req.method;
    const routedPath = routedRoute(path, routeDeps);
    if (routedPath) {
      if (method !== 'POST') return methodNotAllowed(res, 'POST');
      void inference(req, res, routedPath.parse, routedPath.route, url);
      return;
    }
    if (serveStoredResponse(req, res, path, store, d.fleet, d.passthrough)) return;
    switch (path) {
      case '/health':
        return json(res, 200, { status: 'ok' });
      case '/ready': {
        const healthy = d.fleet.healthy.length;
        return json(res, healthy > 0 ? 200 : 503, {
          ready: healthy > 0,
          healthyWorkers: healthy,
          workers: d.fleet.workers.length,
        });
      }
      case '/metrics':
        d.metrics.registry.metrics().then(
          (text) => {
            res.writeHead(200, { 'content-type': d.metrics.registry.contentType });
            res.end(text);
          },
          (err: unknown) => sendError(res, internal(err, d.log, '')),
        );
        return;
      case '/v1/models':
        if (method === 'GET') {
          fleetModels(d.fleet, d.transport).then(
            (body) => json(res, 200, body),
            (err: unknown) => sendError(res, internal(err, d.log, '')),
          );
          return;
        }
    }
    if (path.startsWith(MODEL_PREFIX) && method === 'GET') {
      retrieveModel(res, path.slice(MODEL_PREFIX.length), () => fleetModels(d.fleet, d.transport)).catch(
        (err: unknown) => sendError(res, internal(err, d.log, '')),
      );
      return;
    }
    // The pass-through decides: per-request engine routes go through, admin ones get 403, others 404.
    d.passthrough.handle(req, res);
  };
}

/** What the HTTP port of `kvgate epp` answers: the operational routes; inference goes through the Gateway in front. */
const OPS_PATHS = new Set(['/health', '/ready', '/metrics']);

/** The HTTP handler of `kvgate epp` (without `--proxy`): `handler` for the operational routes, 404 for the rest. */
export function opsOnly(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    if (OPS_PATHS.has(q === -1 ? url : url.slice(0, q))) return handler(req, res);
    req.resume();
    sendError(
      res,
      new GatewayError(
        404,
        `kvgate runs as an Endpoint Picker: this port serves only ${[...OPS_PATHS].join(', ')}; send inference requests to the Gateway in front (or start kvgate epp with --proxy)`,
        'not_found_error',
        'epp_mode',
      ),
    );
  };
}

/** With flow control, the response also reports its latencies back to it (TTFT learning, SLO attainment). */
const flowObserved = (pass: FlowPass | undefined, observer: RequestOutcome) => pass?.observe(observer) ?? observer;

function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function methodNotAllowed(res: ServerResponse, allow: string): void {
  sendError(
    res,
    new GatewayError(405, `method not allowed; use ${allow}`, 'invalid_request_error', 'method_not_allowed'),
    { allow },
  );
}

function internal(err: unknown, log: Logger, requestId: string): GatewayError {
  log.error({ err, requestId }, 'internal error');
  return new GatewayError(500, 'internal gateway error', 'upstream_error', 'internal_error');
}
