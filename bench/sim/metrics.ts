import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { KvCache } from './kv-cache.js';
import type { Scheduler } from './scheduler.js';

// vLLM's own bucket boundaries, so dashboards and the gateway read the same shapes.
const TTFT_BUCKETS = [
  0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560,
];
const E2E_BUCKETS = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];

/** One engine core: a data-parallel rank's scheduler and KV cache. */
export interface SimEngine {
  readonly scheduler: Scheduler;
  readonly cache: KvCache;
}

/**
 * `/metrics` with vLLM's names and labels (`model_name`, `engine` = the DP
 * rank: one series per rank, as vLLM's API server reports its engines).
 * Gauges and counters are read from the scheduler and cache at scrape time;
 * latencies are observed per finished request, in real (sped-up) seconds.
 */
export class SimMetrics {
  readonly registry = new Registry();
  readonly #ttft: Histogram<'model_name' | 'engine'>;
  readonly #e2e: Histogram<'model_name' | 'engine'>;
  readonly #success: Counter<'model_name' | 'engine' | 'finished_reason'>;
  readonly #labels: { model_name: string; engine: string }[];

  constructor(model: string, engines: readonly SimEngine[]) {
    const labels = engines.map((_, i) => ({ model_name: model, engine: String(i) }));
    this.#labels = labels;
    const labelNames = ['model_name', 'engine'] as const;
    const registers = [this.registry];
    const gauge = (name: string, help: string, read: (e: SimEngine) => number) =>
      new Gauge({
        name,
        help,
        labelNames,
        registers,
        collect() {
          engines.forEach((e, i) => this.set(labels[i]!, read(e)));
        },
      });
    // prom-client counters cannot be set; at scrape time they are rebuilt from the scheduler's totals.
    const counter = (name: string, help: string, read: (c: Scheduler['counters']) => number) =>
      new Counter({
        name,
        help,
        labelNames,
        registers,
        collect() {
          this.reset();
          engines.forEach((e, i) => this.inc(labels[i]!, read(e.scheduler.counters)));
        },
      });
    gauge(
      'vllm:num_requests_running',
      'Number of requests in model execution batches.',
      ({ scheduler }) => scheduler.running.length,
    );
    gauge(
      'vllm:num_requests_waiting',
      'Number of requests waiting to be processed.',
      ({ scheduler }) => scheduler.waiting.length + scheduler.loading.length,
    );
    gauge('vllm:kv_cache_usage_perc', 'KV-cache usage. 1 means 100 percent usage.', ({ cache }) => cache.usage);
    counter(
      'vllm:prefix_cache_queries_total',
      'Prefix cache queries, in terms of number of queried tokens.',
      (c) => c.prefixQueryTokens,
    );
    counter(
      'vllm:prefix_cache_hits_total',
      'Prefix cache hits, in terms of number of cached tokens.',
      (c) => c.prefixHitTokens,
    );
    counter('vllm:num_preemptions_total', 'Cumulative number of preemption from the engine.', (c) => c.preemptions);
    counter('vllm:prompt_tokens_total', 'Number of prefill tokens processed.', (c) => c.prefixQueryTokens);
    counter('vllm:generation_tokens_total', 'Number of generation tokens processed.', (c) => c.generatedTokens);
    // P/D decode side: prompt tokens whose KV a remote prefill supplied (vLLM's KV-connector prefix cache counters).
    counter(
      'vllm:external_prefix_cache_hits_total',
      'External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of cached tokens.',
      (c) => c.kvLoadTokens,
    );
    counter(
      'vllm:nixl_num_failed_transfers_total',
      'Number of failed NIXL KV cache transfers (the prompt was recomputed).',
      (c) => c.kvLoadFailures,
    );
    this.#ttft = new Histogram({
      name: 'vllm:time_to_first_token_seconds',
      help: 'Histogram of time to first token in seconds.',
      labelNames,
      buckets: TTFT_BUCKETS,
      registers,
    });
    this.#e2e = new Histogram({
      name: 'vllm:e2e_request_latency_seconds',
      help: 'Histogram of e2e request latency in seconds.',
      labelNames,
      buckets: E2E_BUCKETS,
      registers,
    });
    this.#success = new Counter({
      name: 'vllm:request_success_total',
      help: 'Count of successfully processed requests.',
      labelNames: ['model_name', 'engine', 'finished_reason'],
      registers,
    });
  }

  observeFirstToken(seconds: number, engine = 0): void {
    this.#ttft.observe(this.#labels[engine]!, seconds);
  }

  observeFinished(seconds: number, reason: string, engine = 0): void {
    this.#e2e.observe(this.#labels[engine]!, seconds);
    this.#success.inc({ ...this.#labels[engine]!, finished_reason: reason });
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
