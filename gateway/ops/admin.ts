import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import { z } from 'zod';
import { badRequest, GatewayError, sendError } from '../front/errors.js';
import type { Fleet } from '../fleet/fleet.js';
import type { RoutingPipeline } from '../routing/pipeline.js';
import type { DisaggAdmin } from '../disagg/two-leg.js';
import { parseInference, readBody } from '../front/request.js';
import type { FlowControl } from '../flow/flow.js';
import { isToolFollowUp, sessionKeyOf, type ToolSessions } from '../fleet/tools/tool-sessions.js';
import { steerToHolder } from '../front/routes/routed.js';

/** The admin listener: loopback only by default; with a token, anyone holding it. */
export const adminConfigSchema = z.strictObject({
  host: z.string().min(1).default('127.0.0.1'),
  port: z.number().int().min(0).max(65535).default(8081),
  /** When set, every admin request needs `Authorization: Bearer <token>`. */
  token: z.string().min(16, 'admin token must be at least 16 characters').optional(),
});
export type AdminConfig = z.infer<typeof adminConfigSchema>;

export interface AdminDeps {
  readonly fleet: Fleet;
  readonly pipeline: RoutingPipeline;
  readonly token: string | undefined;
  /** Hook for the KV index's stats in `/debug/workers` (blocks per worker, events seen...). */
  readonly indexStats?: (() => unknown) | undefined;
  /** Prefill/decode disaggregation: its section of `/debug/route`, and `/debug/planner`. */
  readonly disagg?: DisaggAdmin | undefined;
  /** LoRA adapters across the fleet (gateway/ops/lora-admin.ts); true when it answered the request. */
  readonly lora?: ((req: IncomingMessage, res: ServerResponse, path: string) => boolean) | undefined;
  /** Flow control: `/debug/flow`, and predicted TTFT per candidate in `/debug/route`. */
  readonly flow?: FlowControl | undefined;
  /** Tool-call retention: the affinity and predicted return in `/debug/route`, and `/debug/tools`. */
  readonly tools?: ToolSessions | undefined;
}

/** True for 127.0.0.0/8 and ::1, in plain or IPv4-mapped form. */
export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  const a = address.startsWith('::ffff:') ? address.slice(7) : address;
  return a === '::1' || a.startsWith('127.');
}

/** Constant-time bearer check: compares SHA-256 digests, so lengths never leak either. */
export function bearerMatches(header: string | undefined, token: string): boolean {
  if (!header?.startsWith('Bearer ')) return false;
  const given = createHash('sha256').update(header.slice(7)).digest();
  const expected = createHash('sha256').update(token).digest();
  return timingSafeEqual(given, expected);
}

/** Listed in the 404 answer, so a mistyped admin path shows what exists. */
export const ADMIN_ROUTES = [
  'GET /debug/workers',
  'GET /debug/experiments',
  'GET /debug/planner',
  'GET /debug/tools',
  'POST /debug/route',
] as const;

export function createAdminHandler(d: AdminDeps): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    if (d.token !== undefined) {
      if (!bearerMatches(req.headers.authorization, d.token)) {
        sendError(
          res,
          new GatewayError(
            401,
            'admin endpoint requires a valid bearer token',
            'authentication_error',
            'invalid_admin_token',
          ),
          { 'www-authenticate': 'Bearer' },
        );
        return;
      }
    } else if (!isLoopback(req.socket.remoteAddress)) {
      sendError(
        res,
        new GatewayError(
          403,
          'admin endpoint serves loopback clients only (configure admin.token to allow others)',
          'authentication_error',
          'admin_loopback_only',
        ),
      );
      return;
    }
    const path = (req.url ?? '/').split('?')[0]!;
    if (path === '/debug/workers' && req.method === 'GET') return json(res, 200, workers(d));
    if (path.startsWith('/lora') && d.lora?.(req, res, path)) return;
    if (path === '/debug/experiments' && req.method === 'GET') return json(res, 200, d.pipeline.summary());
    if (path === '/debug/flow' && req.method === 'GET')
      return json(res, 200, d.flow?.summary(d.fleet.workers) ?? { enabled: false });
    if (path === '/debug/tools' && req.method === 'GET')
      return json(res, 200, d.tools?.summary() ?? { enabled: false });
    if (path === '/debug/planner' && req.method === 'GET')
      return json(res, 200, d.disagg?.plannerReport() ?? { pools: [] });
    if (path === '/debug/route' && req.method === 'POST') {
      debugRoute(d, req).then(
        (body) => json(res, 200, body),
        (err: unknown) => {
          sendError(
            res,
            err instanceof GatewayError
              ? err
              : new GatewayError(500, String((err as Error)?.message ?? err), 'upstream_error', 'internal_error'),
          );
        },
      );
      return;
    }
    sendError(
      res,
      new GatewayError(
        404,
        `no admin route for ${req.method} ${path}; admin routes: ${ADMIN_ROUTES.join(', ')}`,
        'not_found_error',
        'unknown_url',
      ),
    );
  };
}

function workers(d: AdminDeps): unknown {
  return {
    workers: d.fleet.workers.map((w) => ({
      id: w.id,
      url: w.url,
      models: w.models,
      role: w.role,
      labels: w.labels,
      healthy: w.healthy,
      lastCheckAt: w.lastCheckAt,
      lastError: w.lastError,
      load: w.load,
      // This replica's requests awaiting their first token: the whole prompts, and the part not predicted cached.
      inPrefill: { promptTokens: w.active.prefillPromptTokens, uncachedTokens: w.active.prefillUncachedTokens },
      available: w.available,
      breaker: w.breaker.snapshot(),
    })),
    index: d.indexStats?.(),
  };
}

/**
 * Runs the routing pipeline on a request without forwarding it or touching load.
 * Accepts `{body, headers?, path?}` or a bare chat/completion body.
 */
async function debugRoute(d: AdminDeps, req: IncomingMessage): Promise<unknown> {
  const raw = await readBody(req, 32 * 1024 * 1024);
  let input: unknown;
  try {
    input = JSON.parse(raw.toString('utf8'));
  } catch {
    throw badRequest('body is not valid JSON', null, 'invalid_json');
  }
  if (typeof input !== 'object' || input === null) throw badRequest('body must be a JSON object');
  const wrapped = 'body' in input && !('model' in input);
  const w = input as { body?: unknown; headers?: unknown; path?: unknown };
  const body = wrapped ? w.body : input;
  const headers: IncomingHttpHeaders = {};
  if (wrapped && typeof w.headers === 'object' && w.headers !== null) {
    for (const [k, v] of Object.entries(w.headers)) if (typeof v === 'string') headers[k.toLowerCase()] = v;
  }
  const isChat = typeof body === 'object' && body !== null && 'messages' in body;
  const path = wrapped && typeof w.path === 'string' ? w.path : isChat ? '/v1/chat/completions' : '/v1/completions';
  const request = parseInference(Buffer.from(JSON.stringify(body)), path.includes('chat') ? 'chat' : 'completion');
  const requestId = (headers['x-request-id'] as string | undefined) ?? randomUUID();
  let routed = await d.pipeline.route(request, path, headers, requestId);
  // What the front would do with a tool result: show the held session and, if it applies, the holder.
  const session =
    d.tools && request.kind === 'chat' ? sessionKeyOf(routed.ctx.sessionKey, request.model, request.body) : undefined;
  const held = session !== undefined ? d.tools!.affinity(session) : undefined;
  const followUp = isToolFollowUp(request.body);
  if (held && followUp) routed = steerToHolder(d.fleet, routed, held).routed;
  const { decision, ctx } = routed;
  return {
    worker: decision.worker.id,
    url: decision.worker.url,
    strategy: routed.strategy.name,
    arm: routed.selection.arm,
    rule: routed.selection.rule,
    pool: routed.selection.pool?.name ?? null,
    // Say where prompt hashing stopped (media), so a short prediction is not mistaken for a cold cache.
    explain: ctx.blocks?.stoppedAt
      ? {
          ...(decision.explain as object | undefined),
          stoppedAt: ctx.blocks.stoppedAt.reason,
          stoppedAtBlock: ctx.blocks.stoppedAt.block,
        }
      : decision.explain,
    predictedCachedBlocks: decision.predictedCachedBlocks,
    dataParallelRank: decision.dataParallelRank,
    candidates: decision.candidates ?? routed.candidates.map((c) => ({ worker: c.id, terms: { ...c.load } })),
    context: {
      requestId,
      model: ctx.model,
      sessionKey: ctx.sessionKey,
      promptTokens: ctx.promptTokens,
      // Not `promptBlocks`: a strategy's explain counts promptTokens / blockSize (a partial last block costs
      // prefill too), while only full blocks are hashed and can match the index.
      fullBlocksHashed: ctx.blocks?.hashes.length,
    },
    disaggregation: d.disagg?.handles(routed) ? await d.disagg.explain(routed) : undefined,
    flow: d.flow?.explain(routed, headers),
    toolSession: d.tools
      ? {
          session: session ?? null,
          followUp,
          affinity: held ? (followUp ? held.worker : null) : null,
          ...(held ? { pending: held } : {}),
        }
      : undefined,
  };
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
