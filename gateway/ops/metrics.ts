import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Fleet } from '../fleet/fleet.js';
import { registerBreakerMetrics } from './resilience-metrics.js';

/** Latency buckets from 5 ms to 5 min: TTFT and generation times of LLM requests. */
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
const TOKEN_BUCKETS = [0, 16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072];
const DECISION_BUCKETS = [0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25];

type Child<T> =
  T extends Counter<string> ? ReturnType<T['labels']> : T extends Histogram<string> ? ReturnType<T['labels']> : never;

/**
 * The gateway's metrics, on one registry per gateway (so several gateways can
 * share a process in tests). Labelled children are cached, because prom-client
 * hashes label sets on every `labels()` call and this runs per request.
 */
export class GatewayMetrics {
  readonly registry = new Registry();
  readonly #requests: Counter<'route' | 'worker' | 'strategy' | 'status' | 'arm'>;
  readonly #ttft: Histogram<'strategy' | 'worker' | 'arm'>;
  readonly #duration: Histogram<'strategy' | 'worker' | 'arm'>;
  readonly #upstreamErrors: Counter<'worker' | 'kind'>;
  readonly #retries: Counter<'worker' | 'kind'>;
  readonly decisionSeconds: Histogram<'strategy'>;
  readonly #promptTokens: Histogram<'strategy' | 'arm'>;
  readonly #predictedCached: Histogram<'strategy' | 'arm'>;
  readonly #actualCached: Histogram<'strategy' | 'arm'>;
  readonly #usagePrompt: Histogram<'strategy' | 'arm'>;
  readonly #shadowDecisions: Counter<'strategy' | 'shadow' | 'agreed'>;
  readonly #shadowPredicted: Histogram<'strategy' | 'shadow'>;
  readonly #cache = new Map<string, unknown>();

  constructor(fleet: Fleet, options: { defaultMetrics?: boolean | undefined } = {}) {
    const registers = [this.registry];
    // `arm` is the A/B experiment arm, `none` outside experiments.
    this.#requests = new Counter({
      name: 'kvgate_requests_total',
      help: 'Requests answered, by route, worker, strategy, HTTP status and experiment arm',
      labelNames: ['route', 'worker', 'strategy', 'status', 'arm'],
      registers,
    });
    this.#ttft = new Histogram({
      name: 'kvgate_time_to_first_token_seconds',
      help: 'Time from request received to first upstream body chunk',
      labelNames: ['strategy', 'worker', 'arm'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.#duration = new Histogram({
      name: 'kvgate_request_duration_seconds',
      help: 'Time from request received to response end',
      labelNames: ['strategy', 'worker', 'arm'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.#upstreamErrors = new Counter({
      name: 'kvgate_upstream_errors_total',
      help: 'Upstream failures, by worker and kind (connect, timeout, reset, client_abort)',
      labelNames: ['worker', 'kind'],
      registers,
    });
    this.#retries = new Counter({
      name: 'kvgate_upstream_retries_total',
      help: 'Requests retried on another worker before any byte reached the client, by the failed worker and the failure kind',
      labelNames: ['worker', 'kind'],
      registers,
    });
    registerBreakerMetrics(this.registry, fleet);
    this.decisionSeconds = new Histogram({
      name: 'kvgate_routing_decision_seconds',
      help: 'Time to route a request (policy, tokenization if needed, strategy)',
      labelNames: ['strategy'],
      buckets: DECISION_BUCKETS,
      registers,
    });
    this.#promptTokens = new Histogram({
      name: 'kvgate_prompt_tokens',
      help: 'Prompt tokens per routed request (exact when tokenized, else estimated)',
      labelNames: ['strategy', 'arm'],
      buckets: TOKEN_BUCKETS,
      registers,
    });
    this.#predictedCached = new Histogram({
      name: 'kvgate_predicted_cached_tokens',
      help: 'Prompt tokens the strategy expected the chosen worker to hold in its KV cache',
      labelNames: ['strategy', 'arm'],
      buckets: TOKEN_BUCKETS,
      registers,
    });
    this.#actualCached = new Histogram({
      name: 'kvgate_actual_cached_tokens',
      help: 'Prompt tokens the engine served from its prefix cache (usage cached_tokens, or cache_read_input_tokens on Messages), for responses that report it',
      labelNames: ['strategy', 'arm'],
      buckets: TOKEN_BUCKETS,
      registers,
    });
    this.#usagePrompt = new Histogram({
      name: 'kvgate_usage_prompt_tokens',
      help: 'Prompt tokens the engine reported (usage prompt_tokens, or input_tokens on Responses and Messages) for responses that report cached tokens: the denominator of the cache-hit ratio',
      labelNames: ['strategy', 'arm'],
      buckets: TOKEN_BUCKETS,
      registers,
    });
    this.#shadowDecisions = new Counter({
      name: 'kvgate_shadow_decisions_total',
      help: 'Shadow decisions by real strategy, shadow strategy and whether the shadow chose the same worker',
      labelNames: ['strategy', 'shadow', 'agreed'],
      registers,
    });
    this.#shadowPredicted = new Histogram({
      name: 'kvgate_shadow_predicted_cached_tokens',
      help: 'Prompt tokens a shadow strategy expected its chosen worker to hold',
      labelNames: ['strategy', 'shadow'],
      buckets: TOKEN_BUCKETS,
      registers,
    });
    // Load gauges read the fleet at scrape time: nothing to update per request.
    new Gauge({
      name: 'kvgate_inflight_requests',
      help: 'Requests this gateway has in flight per worker (other replicas not included)',
      labelNames: ['worker'],
      registers,
      collect() {
        for (const w of fleet.workers) this.set({ worker: w.id }, w.localLoad.inflightRequests);
      },
    });
    new Gauge({
      name: 'kvgate_inflight_prefill_tokens',
      help: 'Prompt tokens of requests waiting for their first token, per worker',
      labelNames: ['worker'],
      registers,
      collect() {
        for (const w of fleet.workers) this.set({ worker: w.id }, w.localLoad.prefillTokens);
      },
    });
    new Gauge({
      name: 'kvgate_worker_healthy',
      help: '1 when the worker passes its health check',
      labelNames: ['worker'],
      registers,
      collect() {
        for (const w of fleet.workers) this.set({ worker: w.id }, w.healthy ? 1 : 0);
      },
    });
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'kvgate_' });
  }

  request(route: string, worker: string, strategy: string, status: number, arm = 'none'): void {
    this.#child(this.#requests, `r\0${route}\0${worker}\0${strategy}\0${status}\0${arm}`, [
      route,
      worker,
      strategy,
      String(status),
      arm,
    ]).inc();
  }

  ttft(strategy: string, worker: string, seconds: number, arm = 'none'): void {
    this.#child(this.#ttft, `t\0${strategy}\0${worker}\0${arm}`, [strategy, worker, arm]).observe(seconds);
  }

  duration(strategy: string, worker: string, seconds: number, arm = 'none'): void {
    this.#child(this.#duration, `d\0${strategy}\0${worker}\0${arm}`, [strategy, worker, arm]).observe(seconds);
  }

  /** A request failed on `worker` before its first byte and goes to another worker. */
  retry(worker: string, kind: string): void {
    this.#child(this.#retries, `y\0${worker}\0${kind}`, [worker, kind]).inc();
  }

  upstreamError(worker: string, kind: string): void {
    this.#child(this.#upstreamErrors, `e\0${worker}\0${kind}`, [worker, kind]).inc();
  }

  /** A request was routed: its prompt size and, when the prompt was hashed, the predicted cache hit. */
  routed(strategy: string, promptTokens: number, predictedCachedTokens: number | undefined, arm = 'none'): void {
    this.#child(this.#promptTokens, `p\0${strategy}\0${arm}`, [strategy, arm]).observe(promptTokens);
    if (predictedCachedTokens !== undefined)
      this.#child(this.#predictedCached, `c\0${strategy}\0${arm}`, [strategy, arm]).observe(predictedCachedTokens);
  }

  /** The engine's own usage report: prompt tokens and how many of them it found in its prefix cache. */
  actualCached(strategy: string, arm: string, promptTokens: number, cachedTokens: number): void {
    this.#child(this.#actualCached, `ac\0${strategy}\0${arm}`, [strategy, arm]).observe(cachedTokens);
    this.#child(this.#usagePrompt, `up\0${strategy}\0${arm}`, [strategy, arm]).observe(promptTokens);
  }

  /** A shadow strategy's decision next to the real one (`predictedCachedTokens` when the prompt was hashed). */
  shadowDecision(strategy: string, shadow: string, agreed: boolean, predictedCachedTokens: number | undefined): void {
    this.#child(this.#shadowDecisions, `sd\0${strategy}\0${shadow}\0${agreed}`, [
      strategy,
      shadow,
      String(agreed),
    ]).inc();
    if (predictedCachedTokens !== undefined)
      this.#child(this.#shadowPredicted, `sp\0${strategy}\0${shadow}`, [strategy, shadow]).observe(
        predictedCachedTokens,
      );
  }

  decision(strategy: string, seconds: number): void {
    this.#child(this.decisionSeconds, `s\0${strategy}`, [strategy]).observe(seconds);
  }

  #child<M extends Counter<string> | Histogram<string>>(metric: M, key: string, values: string[]): Child<M> {
    let c = this.#cache.get(key);
    if (c === undefined) this.#cache.set(key, (c = metric.labels(...values)));
    return c as Child<M>;
  }
}
