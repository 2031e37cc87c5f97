import { z } from 'zod';
import { ConfigError } from '../../config/errors.js';

/**
 * Upstream authentication: each worker may hold a bearer token (vLLM `--api-key`,
 * SGLang `--api-key`), given inline (`apiKey`) or by environment variable
 * (`apiKeyEnv`, read once at start-up, so secrets can stay out of the file).
 *
 * Default: the gateway holds the keys. A worker with a key gets `Authorization:
 * Bearer <key>` on every forwarded request (inference and pass-through), and the
 * client's own `Authorization` is never forwarded, so a client credential for the
 * gateway cannot leak to the engines. `upstream.passClientAuthorization: true`
 * forwards the client's header to workers that have no key of their own (setups
 * where clients hold the engine key and the gateway only routes).
 */
export const workerAuthShape = {
  /** Bearer token the worker expects (vLLM `--api-key`). Prefer `apiKeyEnv`. */
  apiKey: z.string().min(1).optional(),
  /** Name of an environment variable holding the worker's bearer token. */
  apiKeyEnv: z
    .string()
    .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be an environment variable name')
    .optional(),
};

/** What `configureUpstreamAuth` reads from a worker's config. */
export interface WorkerAuthConfig {
  readonly id: string;
  readonly apiKey?: string | undefined;
  readonly apiKeyEnv?: string | undefined;
}

/** A worker's bearer header, by worker object: credentials live here, never on anything that is logged or shown in /debug. */
const keys = new WeakMap<object, string>();

/**
 * Resolves every worker's key (config, else environment) and remembers it for
 * `withWorkerAuth`. `workers` are the fleet's worker objects, matched to configs by id.
 * Throws a one-line error when a named variable is unset or empty, or both forms are given.
 */
export function configureUpstreamAuth(
  workers: readonly { readonly id: string }[],
  configs: readonly WorkerAuthConfig[],
  env: NodeJS.ProcessEnv = process.env,
): void {
  const byId = new Map(configs.map((c) => [c.id, c]));
  for (const w of workers) {
    const c = byId.get(w.id);
    const key = c ? resolveKey(c, env) : undefined;
    if (key === undefined) keys.delete(w);
    else keys.set(w, `Bearer ${key}`);
  }
}

function resolveKey(c: WorkerAuthConfig, env: NodeJS.ProcessEnv): string | undefined {
  if (c.apiKey !== undefined && c.apiKeyEnv !== undefined) {
    throw new ConfigError(`kvgate: worker '${c.id}': set apiKey or apiKeyEnv, not both`);
  }
  if (c.apiKey !== undefined) return c.apiKey;
  if (c.apiKeyEnv === undefined) return undefined;
  const v = env[c.apiKeyEnv];
  if (v === undefined || v === '')
    throw new ConfigError(`kvgate: worker '${c.id}': apiKeyEnv ${c.apiKeyEnv} is not set`);
  return v;
}

/** True when the worker has a key of its own. */
export function hasWorkerAuth(worker: object): boolean {
  return keys.has(worker);
}

/**
 * The headers for one attempt on `worker`: its own key replaces any `Authorization`
 * (a retry on another worker must not carry the first one's key); without a key the
 * headers go as built (client `Authorization` only when configured, see headers.ts).
 */
export function withWorkerAuth<H extends Record<string, string | string[] | undefined>>(worker: object, headers: H): H {
  const auth = keys.get(worker);
  if (auth === undefined) return headers;
  return { ...headers, authorization: auth };
}

/** The worker's `Authorization` value, for transports that set headers one by one (the pass-through proxy). */
export function workerAuthorization(worker: object): string | undefined {
  return keys.get(worker);
}
