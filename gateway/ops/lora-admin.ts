import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { badRequest, GatewayError, sendError } from '../front/errors.js';
import { readBody } from '../front/request.js';
import type { FleetAdapters, LoraConfig } from '../fleet/adapters.js';
import type { Fleet, Worker } from '../fleet/fleet.js';
import type { Transport } from '../proxy/forward.js';
import { withWorkerAuth } from '../proxy/upstream-auth.js';
import { resolvePools, type PoolConfig } from '../routing/policies/pools.js';

export interface LoraAdminDeps {
  fleet: Fleet;
  transport: Transport;
  adapters: FleetAdapters;
  config: LoraConfig;
  log: Logger;
  /** The pools of the routing in force (`routing.pools`), for `"pool": name`. */
  pools: () => Readonly<Record<string, PoolConfig>>;
}

type Action = 'load' | 'unload';

/** What happened on one worker. `status` is the worker's HTTP status, null when it did not answer. */
export interface WorkerOutcome {
  worker: string;
  outcome: 'loaded' | 'already_loaded' | 'unloaded' | 'not_loaded' | 'failed';
  status: number | null;
  message: string;
}

const MAX_BODY = 64 * 1024;

/**
 * LoRA adapters as a fleet operation, on the admin port (its token check runs
 * first): `POST /lora/load` `{lora_name, lora_path, pool? | workers?}` and
 * `POST /lora/unload` `{lora_name, pool? | workers?}` call vLLM's runtime LoRA
 * routes on every targeted worker at once (no target: the whole fleet), then
 * re-read those workers' `/v1/models` so routing and prompt hashing follow
 * before the answer goes out. `GET /lora` shows who has what. The answer is
 * 200 when every worker did what was asked (or already had), 207 when some
 * failed, 502 when all did; each worker's outcome is listed either way.
 */
export function createLoraAdmin(
  d: LoraAdminDeps,
): (req: IncomingMessage, res: ServerResponse, path: string) => boolean {
  return (req, res, path) => {
    if (path === '/lora' && req.method === 'GET') {
      json(res, 200, d.adapters.snapshot());
      return true;
    }
    const action: Action | undefined = path === '/lora/load' ? 'load' : path === '/lora/unload' ? 'unload' : undefined;
    if (!action) return false;
    if (req.method !== 'POST') {
      sendError(
        res,
        new GatewayError(405, 'method not allowed; use POST', 'invalid_request_error', 'method_not_allowed'),
        { allow: 'POST' },
      );
      return true;
    }
    run(d, action, req).then(
      ({ status, body }) => json(res, status, body),
      (err: unknown) => {
        if (!(err instanceof GatewayError)) d.log.error({ err }, 'lora admin failed');
        sendError(
          res,
          err instanceof GatewayError
            ? err
            : new GatewayError(500, 'internal gateway error', 'upstream_error', 'internal_error'),
        );
      },
    );
    return true;
  };
}

async function run(d: LoraAdminDeps, action: Action, req: IncomingMessage): Promise<{ status: number; body: unknown }> {
  const body = parseBody(await readBody(req, MAX_BODY));
  const name = body.lora_name;
  if (typeof name !== 'string' || name.trim() === '')
    throw badRequest('lora_name must be a non-empty string', 'lora_name');
  if (d.fleet.servesModel(name) && d.adapters.parentOf(name) === undefined)
    throw badRequest(`'${name}' is a base model of the fleet, not an adapter`, 'lora_name');
  const path = body.lora_path;
  if (action === 'load' && (typeof path !== 'string' || path === ''))
    throw badRequest('lora_path must be a non-empty string (a path on the workers)', 'lora_path');
  const targets = resolveTargets(d, body);
  const upstreamBody = JSON.stringify(action === 'load' ? { lora_name: name, lora_path: path } : { lora_name: name });
  const results = await Promise.all(targets.map((w) => callWorker(d, w, action, upstreamBody)));
  await d.adapters.refresh(targets);
  const failed = results.filter((r) => r.outcome === 'failed').length;
  d.log.info({ action, adapter: name, workers: targets.map((w) => w.id), failed }, `lora ${action}`);
  return {
    status: failed === 0 ? 200 : failed < results.length ? 207 : 502,
    body: {
      action,
      adapter: name,
      results,
      loadedOn: d.fleet.workers.filter((w) => d.adapters.holds(w.id, name)).map((w) => w.id),
    },
  };
}

function parseBody(raw: Buffer): Record<string, unknown> {
  let body: unknown;
  try {
    body = JSON.parse(raw.toString('utf8'));
  } catch {
    throw badRequest('body is not valid JSON', null, 'invalid_json');
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw badRequest('body must be a JSON object');
  const known = new Set(['lora_name', 'lora_path', 'pool', 'workers']);
  const extra = Object.keys(body).find((k) => !known.has(k));
  if (extra !== undefined) throw badRequest(`unknown field '${extra}' (fields: ${[...known].join(', ')})`, extra);
  return body as Record<string, unknown>;
}

/** `workers` (ids), `pool` (a routing pool's name) or neither (the whole fleet); never both. */
function resolveTargets(d: LoraAdminDeps, body: Record<string, unknown>): Worker[] {
  const { pool, workers } = body;
  if (pool !== undefined && workers !== undefined) throw badRequest('give pool or workers, not both', 'pool');
  const members = d.fleet.workers;
  if (workers !== undefined) {
    if (!isIdList(workers)) throw badRequest('workers must be a non-empty list of worker ids', 'workers');
    return [...new Set(workers)].map((id) => {
      const w = members.find((m) => m.id === id);
      if (!w) throw badRequest(`unknown worker '${id}' (workers: ${members.map((m) => m.id).join(', ')})`, 'workers');
      return w;
    });
  }
  if (pool !== undefined) {
    if (typeof pool !== 'string') throw badRequest('pool must be a pool name', 'pool');
    const pools = d.pools();
    if (!(pool in pools))
      throw badRequest(`unknown pool '${pool}' (pools: ${Object.keys(pools).join(', ') || 'none'})`, 'pool');
    let resolved;
    try {
      resolved = resolvePools({ [pool]: pools[pool]! }, members).get(pool)!;
    } catch (err) {
      throw badRequest(`pool '${pool}' has no usable members: ${(err as Error).message}`, 'pool');
    }
    return members.filter((w) => resolved.members.has(w.id));
  }
  if (members.length === 0) throw new GatewayError(503, 'the fleet has no workers', 'service_unavailable');
  return [...members];
}

function isIdList(value: unknown): value is string[] {
  return Array.isArray(value) && value.length > 0 && value.every((w) => typeof w === 'string');
}

async function callWorker(d: LoraAdminDeps, w: Worker, action: Action, body: string): Promise<WorkerOutcome> {
  try {
    const { pool, basePath } = d.transport.get(w);
    const res = await pool.request({
      path: `${basePath}/v1/${action}_lora_adapter`,
      method: 'POST',
      headers: withWorkerAuth(w, {
        'content-type': 'application/json',
        'content-length': String(Buffer.byteLength(body)),
      }),
      body,
      signal: AbortSignal.timeout(d.config.timeoutMs),
    });
    const text = (await res.body.text()).slice(0, 2000);
    const message = errorMessage(text);
    const status = res.statusCode;
    if (status === 200) return { worker: w.id, outcome: action === 'load' ? 'loaded' : 'unloaded', status, message };
    // vLLM's own answers for "nothing to do": a name already loaded (400) or not loaded (404).
    if (action === 'load' && status === 400 && /already been loaded/.test(message))
      return { worker: w.id, outcome: 'already_loaded', status, message };
    if (action === 'unload' && status === 404) return { worker: w.id, outcome: 'not_loaded', status, message };
    return { worker: w.id, outcome: 'failed', status, message };
  } catch (err) {
    return { worker: w.id, outcome: 'failed', status: null, message: (err as Error).message };
  }
}

/** vLLM answers success as plain text and errors as `{"error": {"message"}}` (older: `{"message"}`, `{"detail"}`). */
function errorMessage(text: string): string {
  try {
    const b = JSON.parse(text) as { error?: { message?: unknown }; message?: unknown; detail?: unknown };
    const m = b.error?.message ?? b.message ?? b.detail;
    if (typeof m === 'string') return m;
  } catch {
    /* plain text */
  }
  return text;
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
