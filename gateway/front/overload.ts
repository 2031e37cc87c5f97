import { Counter, Gauge, type Registry } from 'prom-client';
import { z } from 'zod';
import type { ClientAnswer } from '../flow/answer.js';

/**
 * Overload protection (`server.overload`): at most `maxInflight` inference
 * requests are handled at once (from admission until the response closes);
 * up to `maxQueued` more wait in FIFO order for at most `queueTimeoutMs`.
 * Anything beyond gets 429 with `retry-after` at once, before its body is
 * read, so memory stays bounded however hard clients push.
 */
export const overloadConfigSchema = z.strictObject({
  maxInflight: z.number().int().min(1).default(4096),
  maxQueued: z.number().int().min(0).default(512),
  queueTimeoutMs: z.number().int().min(1).default(30_000),
  /** The `retry-after` header of a 429, in seconds. */
  retryAfterSeconds: z.number().int().min(0).default(1),
});
export type OverloadConfig = z.infer<typeof overloadConfigSchema>;

interface Waiter {
  res: ClientAnswer;
  resolve: (admitted: boolean) => void;
  timer: NodeJS.Timeout;
  headers: Record<string, string>;
}

/** Admission is the gateway-wide concurrency bound with its wait queue. */
export class Admission {
  readonly #config: OverloadConfig;
  readonly #queue: Waiter[] = [];
  readonly #rejected: Counter<'reason'>;
  #inflight = 0;

  constructor(config: OverloadConfig, registry: Registry) {
    this.#config = config;
    const registers = [registry];
    const self = this;
    // get-or-create: a second front on the same registry (tests, reload) must not throw on re-registration.
    this.#rejected =
      (registry.getSingleMetric('kvgate_overload_rejected_total') as Counter<'reason'> | undefined) ??
      new Counter({
        name: 'kvgate_overload_rejected_total',
        help: 'Inference requests refused with 429, by reason (queue_full, queue_timeout)',
        labelNames: ['reason'],
        registers,
      });
    if (!registry.getSingleMetric('kvgate_gateway_inflight_requests')) {
      new Gauge({
        name: 'kvgate_gateway_inflight_requests',
        help: 'Inference requests admitted and not yet closed, gateway-wide',
        registers,
        collect() {
          this.set(self.inflight);
        },
      });
      new Gauge({
        name: 'kvgate_gateway_queued_requests',
        help: 'Inference requests waiting for admission',
        registers,
        collect() {
          this.set(self.queued);
        },
      });
    }
  }

  get inflight(): number {
    return this.#inflight;
  }

  get queued(): number {
    return this.#queue.length;
  }

  /**
   * Admits the request now (true), after a wait (a promise of true), or refuses
   * it (false, or a promise of false) having answered 429 itself. An admitted
   * request's slot is released when `res` closes, whatever the outcome.
   */
  acquire(res: ClientAnswer, headers: Record<string, string>): boolean | Promise<boolean> {
    if (this.#inflight < this.#config.maxInflight && this.#queue.length === 0) return this.#admit(res);
    if (this.#queue.length >= this.#config.maxQueued) return this.#refuse(res, headers, 'queue_full');
    return new Promise<boolean>((resolve) => {
      const waiter: Waiter = {
        res,
        resolve,
        headers,
        timer: setTimeout(() => {
          this.#remove(waiter);
          resolve(this.#refuse(res, headers, 'queue_timeout'));
        }, this.#config.queueTimeoutMs),
      };
      this.#queue.push(waiter);
      res.once('close', () => {
        if (this.#remove(waiter)) resolve(false);
      });
    });
  }

  #admit(res: ClientAnswer): true {
    this.#inflight++;
    res.once('close', () => {
      this.#inflight--;
      this.#drain();
    });
    return true;
  }

  #drain(): void {
    while (this.#inflight < this.#config.maxInflight && this.#queue.length > 0) {
      const w = this.#queue.shift()!;
      clearTimeout(w.timer);
      w.resolve(this.#admit(w.res));
    }
  }

  #remove(w: Waiter): boolean {
    const i = this.#queue.indexOf(w);
    if (i === -1) return false;
    this.#queue.splice(i, 1);
    clearTimeout(w.timer);
    return true;
  }

  #refuse(res: ClientAnswer, headers: Record<string, string>, reason: 'queue_full' | 'queue_timeout'): false {
    this.#rejected.inc({ reason });
    if (res.headersSent || res.destroyed) return false;
    const body = JSON.stringify({
      error: {
        message: `the gateway is at its limit of ${this.#config.maxInflight} concurrent requests${reason === 'queue_timeout' ? ' and the request waited too long for a slot' : ''}; retry later`,
        type: 'rate_limit_error',
        param: null,
        code: 'rate_limit_exceeded',
      },
    });
    res.writeHead(429, {
      ...headers,
      'retry-after': String(this.#config.retryAfterSeconds),
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
    });
    res.end(body);
    return false;
  }
}
