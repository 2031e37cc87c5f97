import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { z } from 'zod';
import { badRequest, GatewayError } from '../../front/errors.js';
import type { Decision, Strategy, WorkerView } from '../strategies/strategy.js';

/** Forces a strategy by name, when `routing.overrides.strategyHeader` allows it. */
export const STRATEGY_HEADER = 'x-kvgate-strategy';
/** Pins a worker by id, when `routing.overrides.workerHeader` allows it and the admin token comes along. */
export const WORKER_HEADER = 'x-kvgate-worker';
/**
 * Carries the admin token for a worker pin. Not `Authorization`: that one belongs
 * to the upstream engine (its API key) and is forwarded untouched.
 */
export const ADMIN_TOKEN_HEADER = 'x-kvgate-admin-token';

/**
 * Which per-request headers may change routing. All off by default except the
 * session header, which only keys affinity and experiment stickiness.
 * A disabled override's header is ignored, as if absent.
 */
export const overridesConfigSchema = z.strictObject({
  /** Honour `x-kvgate-strategy: <name>`; an unknown name is a 400. */
  strategyHeader: z.boolean().default(false),
  /** Honour `x-kvgate-worker: <id>` with `x-kvgate-admin-token`; needs `admin.token`. */
  workerHeader: z.boolean().default(false),
  /** Honour the session header (`routing.sessionHeader`) for affinity and sticky arms. */
  session: z.boolean().default(true),
});
export type OverridesConfig = z.infer<typeof overridesConfigSchema>;

const first = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);

export function headerValue(headers: IncomingHttpHeaders, name: string): string | undefined {
  return first(headers[name]);
}

/** Constant-time comparison of a secret: compares SHA-256 digests, so lengths never leak either. */
export function secretMatches(given: string | undefined, secret: string): boolean {
  if (given === undefined) return false;
  return timingSafeEqual(createHash('sha256').update(given).digest(), createHash('sha256').update(secret).digest());
}

/**
 * Checks a worker pin and returns the worker. 403 without the right token; 400
 * for an unknown worker, one that is unhealthy or one that does not serve the model.
 * Only configured workers can be named, so no header reaches any other address.
 */
export function pinnedWorker<W extends WorkerView & { readonly available: boolean }>(
  id: string,
  headers: IncomingHttpHeaders,
  token: string,
  model: string,
  byId: (id: string) => W | undefined,
): W {
  if (!secretMatches(headerValue(headers, ADMIN_TOKEN_HEADER), token)) {
    throw new GatewayError(
      403,
      `${WORKER_HEADER} needs a valid ${ADMIN_TOKEN_HEADER}`,
      'authentication_error',
      'invalid_admin_token',
      WORKER_HEADER,
    );
  }
  const w = byId(id);
  if (!w) throw badRequest(`${WORKER_HEADER}: unknown worker '${id}'`, WORKER_HEADER, 'unknown_worker');
  if (!w.available)
    throw badRequest(
      `${WORKER_HEADER}: worker '${id}' is not available (health check failing or circuit open)`,
      WORKER_HEADER,
      'worker_unavailable',
    );
  if (!w.models.includes(model))
    throw badRequest(
      `${WORKER_HEADER}: worker '${id}' does not serve model '${model}'`,
      WORKER_HEADER,
      'worker_unavailable',
    );
  return w;
}

/** The strategy of a pinned request: always the pinned worker (label `pinned`). */
export function pinnedStrategy(worker: WorkerView): Strategy {
  const decision: Decision = { worker, explain: { pinned: worker.id, by: WORKER_HEADER } };
  return { name: 'pinned', choose: () => decision };
}
