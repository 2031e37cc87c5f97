import { Counter, Histogram, type Registry } from 'prom-client';

const PREFILL_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

/** The disaggregation path's own metrics, on the gateway's registry. */
export class DisaggMetrics {
  readonly #requests: Counter<'path'>;
  readonly #prefillSeconds: Histogram<'worker'>;
  readonly #prefillFailures: Counter<'worker' | 'kind'>;

  constructor(registry: Registry) {
    const registers = [registry];
    this.#requests = new Counter({
      name: 'kvgate_disagg_requests_total',
      labelNames: ['path'],
      registers,
      help: 'Requests in pools with prefill workers, by path: disaggregated (prefill leg + decode leg), aggregated (whole on one worker, by decision), prefill_fallback (the prefill leg failed; served whole)',
    });
    this.#prefillSeconds = new Histogram({
      name: 'kvgate_disagg_prefill_seconds',
      help: 'Duration of successful prefill legs (request sent to kv_transfer_params received), by prefill worker',
      labelNames: ['worker'],
      buckets: PREFILL_BUCKETS,
      registers,
    });
    this.#prefillFailures = new Counter({
      name: 'kvgate_disagg_prefill_failures_total',
      help: 'Prefill legs that failed, by prefill worker and kind (connect, timeout, reset, status, no_params, other)',
      labelNames: ['worker', 'kind'],
      registers,
    });
  }

  path(path: 'disaggregated' | 'aggregated' | 'prefill_fallback'): void {
    this.#requests.inc({ path });
  }

  prefill(worker: string, seconds: number): void {
    this.#prefillSeconds.observe({ worker }, seconds);
  }

  prefillFailed(worker: string, kind: string): void {
    this.#prefillFailures.inc({ worker, kind });
  }
}

const COMPLETION = '"completion_tokens"';
const CHOICE = '"choices":[{';

/**
 * Counts output tokens in a response without parsing it: `usage.completion_tokens`
 * when the engine reports it (always in a JSON body, in a stream only with
 * include_usage), else one per SSE event carrying a choice (a chat stream's
 * first, role-only event not counted).
 */
export class OutputCounter {
  #tail = '';
  #events = 0;
  #usage: number | undefined;

  constructor(readonly chat: boolean) {}

  data(chunk: Buffer): void {
    const text = this.#tail + chunk.toString('latin1');
    // Matches wholly inside the carried tail were counted with the previous chunk.
    let at = text.indexOf(CHOICE, Math.max(0, this.#tail.length - CHOICE.length + 1));
    while (at !== -1) {
      this.#events++;
      at = text.indexOf(CHOICE, at + CHOICE.length);
    }
    const u = text.lastIndexOf(COMPLETION);
    if (u !== -1) {
      const m = /^\s*:\s*(\d+)[^\d]/.exec(text.slice(u + COMPLETION.length));
      if (m) this.#usage = Number(m[1]);
    }
    this.#tail = text.slice(-256);
  }

  get tokens(): number {
    if (this.#usage !== undefined) return this.#usage;
    return Math.max(0, this.#events - (this.chat ? 1 : 0));
  }
}
