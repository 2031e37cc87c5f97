import { z } from 'zod';
import type { Fleet, Worker } from '../fleet/fleet.js';
import type { Decision, RouteContext, Strategy } from '../routing/strategies/strategy.js';

/**
 * Retry before the first response byte (`upstream.retry`). A request that
 * failed before the client saw anything (connect refused or reset, 502/503,
 * no response head in time) goes to the next-best worker: at most `attempts`
 * more tries, never the same worker twice, after `backoffMs` doubled per try
 * and jittered to 50-150 %. Nothing reached the engine's output, so
 * idempotency is not a concern.
 */
export const retryConfigSchema = z.strictObject({
  /** Extra attempts after the first; 0 disables retries. */
  attempts: z.number().int().min(0).max(10).default(2),
  backoffMs: z.number().int().min(0).default(50),
  /** Cap of the doubled backoff. */
  maxBackoffMs: z.number().int().min(0).default(1000),
});
export type RetryConfig = z.infer<typeof retryConfigSchema>;

/**
 * Why one attempt failed; the label of `kvgate_upstream_retries_total` and `kvgate_upstream_errors_total`.
 * `no_params`: a collected body lacked what its job needs (a prefill answer without `kv_transfer_params`).
 */
export type FailureKind = 'connect' | 'timeout' | 'reset' | 'status' | 'no_params' | 'other';

/** A response status that means "this worker cannot take it now, another may". */
export function retryableStatus(status: number): boolean {
  return status === 502 || status === 503;
}

/** Classifies an undici / socket error. */
export function failureKind(err: Error): FailureKind {
  const code = (err as { code?: string }).code ?? '';
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') return 'timeout';
  if (
    code === 'ECONNREFUSED' ||
    code === 'UND_ERR_CONNECT_TIMEOUT' ||
    code === 'ENOTFOUND' ||
    code === 'EHOSTUNREACH' ||
    code === 'ENETUNREACH'
  )
    return 'connect';
  if (code === 'ECONNRESET' || code === 'UND_ERR_SOCKET' || code === 'EPIPE' || code === 'UND_ERR_CLOSED')
    return 'reset';
  return 'other';
}

/** Delay before retry number `n` (1-based): doubling from `backoffMs`, capped, jittered to 50-150 %. */
export function backoffDelay(config: RetryConfig, n: number, random: () => number): number {
  const base = Math.min(config.maxBackoffMs, config.backoffMs * 2 ** (n - 1));
  return Math.round(base * (0.5 + random()));
}

/** The first routing decision, enough to decide again without the workers already tried. */
export interface FirstRoute {
  readonly ctx: RouteContext;
  readonly strategy: Strategy;
  readonly candidates: readonly Worker[];
}

/** Chooses the worker of the next attempt among the first decision's candidates. */
export interface Reroute {
  /** The next worker and its decision, or undefined when none is left. */
  next(tried: ReadonlySet<Worker>): { worker: Worker; decision: Decision } | undefined;
  /** True when some candidate is available and untried (cheap: no strategy runs). */
  possible(tried: ReadonlySet<Worker>): boolean;
}

/**
 * Re-runs the routing decision over the first decision's candidates that are
 * still available and not yet tried, so the retry goes to the next-best worker
 * in the strategy's own terms (its load and cache view are current by now).
 */
export function rerouter(fleet: Fleet, first: FirstRoute): Reroute {
  return {
    next(tried) {
      const remaining = first.candidates.filter((w) => !tried.has(w) && w.available);
      if (remaining.length === 0) return undefined;
      const decision = first.strategy.choose(first.ctx, remaining);
      const worker = fleet.get(decision.worker.id);
      if (!worker || tried.has(worker) || !worker.available) return undefined;
      first.strategy.onRouted?.(first.ctx, decision);
      return { worker, decision };
    },
    possible: (tried) => first.candidates.some((w) => !tried.has(w) && w.available),
  };
}
