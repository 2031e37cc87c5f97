import { request } from 'undici';
import type { Logger } from 'pino';
import type { Fleet, Worker } from './fleet.js';
import type { z } from 'zod';
import type { healthConfigSchema } from './fleet.js';

export type HealthConfig = z.infer<typeof healthConfigSchema>;

/** Probes one worker; resolves with an error message, or undefined when healthy. */
export type HealthProbe = (worker: Worker, timeoutMs: number) => Promise<string | undefined>;

/** `GET /health`: vLLM answers 200 with an empty body, 503 once its engine is dead. */
export const httpHealthProbe: HealthProbe = async (worker, timeoutMs) => {
  try {
    const res = await request(`${worker.url}/health`, {
      method: 'GET',
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
      signal: AbortSignal.timeout(timeoutMs),
    });
    await res.body.dump();
    return res.statusCode === 200 ? undefined : `GET /health answered HTTP ${res.statusCode}`;
  } catch (err) {
    return probeFailure(err, timeoutMs);
  }
};

/**
 * Why a probe failed, in an operator's words: a refused connection (nothing
 * listens), a timeout (something listens but does not answer) and an unknown
 * host call for different fixes, and undici's own messages do not say which.
 */
export function probeFailure(err: unknown, timeoutMs: number): string {
  const e = err as { code?: string; name?: string; message?: string; cause?: { code?: string; message?: string } };
  const code = e.code ?? e.cause?.code;
  const detail = e.message || e.cause?.message || String(err);
  if (code === 'ECONNREFUSED') return `connection refused (${detail})`;
  if (e.name === 'TimeoutError' || code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT')
    return `timed out after ${timeoutMs} ms`;
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return `host not found (${detail})`;
  if (code === 'ECONNRESET' || code === 'UND_ERR_SOCKET') return `connection reset (${detail})`;
  return detail;
}

/**
 * Active health checking: polls every worker on an interval and flips its
 * health after `unhealthyThreshold` failures or `healthyThreshold` successes.
 *
 * Health and the circuit breaker are two independent inputs that the fleet
 * folds into `Worker.available`: a failing check takes the worker out whatever
 * its breaker says, and a passing check never closes or half-opens a breaker.
 * `GET /health` answering says little about whether inference works (a vLLM
 * whose engine loop is wedged may still answer it), so only a real request,
 * the half-open probe, may close a breaker; the probe goes out with the first
 * request after the breaker's `openMs`, as soon as the worker is also healthy.
 */
export class HealthChecker {
  readonly #fleet: Fleet;
  readonly #config: HealthConfig;
  readonly #probe: HealthProbe;
  readonly #log: Logger;
  readonly #streak = new WeakMap<Worker, number>();
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;

  constructor(fleet: Fleet, config: HealthConfig, log: Logger, probe: HealthProbe = httpHealthProbe) {
    this.#fleet = fleet;
    this.#config = config;
    this.#probe = probe;
    this.#log = log;
  }

  /** Runs one round at once (so the gateway starts with a real view), then polls. */
  async start(): Promise<void> {
    await this.checkAll(true);
    this.#timer = setInterval(() => {
      if (!this.#running) this.#running = this.checkAll(false).finally(() => (this.#running = undefined));
    }, this.#config.intervalMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#running;
  }

  /** Checks every worker once. `initial` trusts the first answer, without thresholds. */
  async checkAll(initial = false): Promise<void> {
    await Promise.all(
      this.#fleet.workers.map(async (w) => {
        const error = await this.#probe(w, this.#config.timeoutMs);
        w.lastCheckAt = Date.now();
        const ok = error === undefined;
        // Positive streak counts successes, negative counts failures.
        const prev = this.#streak.get(w) ?? 0;
        const streak = ok ? Math.max(prev, 0) + 1 : Math.min(prev, 0) - 1;
        this.#streak.set(w, streak);
        const flip =
          initial ||
          (ok && !w.healthy && streak >= this.#config.healthyThreshold) ||
          (!ok && w.healthy && -streak >= this.#config.unhealthyThreshold);
        if (flip && this.#fleet.setHealthy(w, ok, error)) {
          this.#log[ok ? 'info' : 'warn'](
            { worker: w.id, url: w.url, error },
            ok ? 'worker healthy' : 'worker unhealthy',
          );
        } else if (initial && !ok) {
          // Workers start unhealthy, so a first failed check is no transition; an operator still needs to hear why.
          this.#log.warn({ worker: w.id, url: w.url, error }, 'worker unhealthy');
        } else {
          w.lastError = error;
        }
      }),
    );
  }
}
