import { otherReplicasPrefillTokens, type WorkerView } from '../routing/strategies/strategy.js';
import type { FlowConfig } from './config.js';

/**
 * One worker's TTFT model: ttft = overhead + tokens / speed, where `tokens` is the
 * prefill ahead of the request (queued on the worker) plus its own uncached part.
 * Fitted online by exponentially weighted least squares, so a worker that slows
 * down (longer decode batches, a bigger model behind the same URL) is followed
 * within a few dozen requests.
 */
class WorkerFit {
  #n = 0;
  #sx = 0;
  #sy = 0;
  #sxx = 0;
  #sxy = 0;
  observations = 0;
  secondsPerToken: number;
  overheadS: number;

  constructor(secondsPerToken: number, overheadS: number) {
    this.secondsPerToken = secondsPerToken;
    this.overheadS = overheadS;
  }

  observe(tokens: number, seconds: number, decay: number): void {
    this.#n = this.#n * decay + 1;
    this.#sx = this.#sx * decay + tokens;
    this.#sy = this.#sy * decay + seconds;
    this.#sxx = this.#sxx * decay + tokens * tokens;
    this.#sxy = this.#sxy * decay + tokens * seconds;
    this.observations++;
    const mx = this.#sx / this.#n;
    const my = this.#sy / this.#n;
    const vx = this.#sxx / this.#n - mx * mx;
    const cov = this.#sxy / this.#n - mx * my;
    // Too little spread in prompt sizes for a slope: keep the overhead and scale the speed through the mean.
    if (this.observations >= 3 && vx > (mx * 0.1) ** 2 && cov > 0) {
      this.secondsPerToken = cov / vx;
      this.overheadS = Math.max(0, my - this.secondsPerToken * mx);
    } else if (mx > 0) {
      this.secondsPerToken = Math.max(1e-9, (my - this.overheadS) / mx);
    }
    if (this.overheadS > my) this.overheadS = my;
  }

  predict(tokens: number): number {
    return this.overheadS + tokens * this.secondsPerToken;
  }
}

/** What the prediction for one candidate was made of (`/debug/route`). */
export interface TtftPrediction {
  worker: string;
  predictedTtftMs: number;
  queuedPrefillTokens: number;
  uncachedTokens: number;
  cachedBlocks: number;
  tokensPerSecond: number;
  saturated: boolean;
}

/** Per-worker prefill speed learned from observed TTFTs, and the saturation test built on it. */
export class TtftModel {
  readonly #config: FlowConfig;
  readonly #fits = new Map<string, WorkerFit>();

  constructor(config: FlowConfig) {
    this.#config = config;
  }

  #fit(id: string): WorkerFit {
    let f = this.#fits.get(id);
    if (!f) {
      const p = this.#config.prediction;
      this.#fits.set(id, (f = new WorkerFit(1 / p.initialTokensPerSecond, p.initialOverheadMs / 1000)));
    }
    return f;
  }

  /** A first token arrived `seconds` after dispatch, with `tokens` of prefill ahead of it and its own. */
  observe(worker: string, tokens: number, seconds: number): void {
    if (!(seconds > 0) || !(tokens >= 0)) return;
    this.#fit(worker).observe(tokens, seconds, this.#config.prediction.decay);
  }

  /**
   * Prefill tokens a worker still has to compute for the requests awaiting their first token:
   * the uncached parts of this replica's (a 28k-token follow-up with 27k cached queues 1k, not 28k)
   * less the estimated progress on the one in prefill (how long the worker has been busy, at its
   * learned speed), plus other replicas' share as they publish it (whole prompts: they send no more).
   */
  queuedPrefill(w: WorkerView, progress = true): number {
    const a = w.active;
    if (!a) return w.load.prefillTokens;
    const remaining = progress
      ? a.prefillRemaining(performance.now(), this.tokensPerSecond(w.id) / 1000)
      : a.prefillUncachedTokens;
    return remaining + otherReplicasPrefillTokens(w, a);
  }

  /** Predicted TTFT in ms on `w` for a prompt with `uncachedTokens` left to prefill. */
  predictMs(w: WorkerView, uncachedTokens: number): number {
    return this.#fit(w.id).predict(this.queuedPrefill(w) + uncachedTokens) * 1000;
  }

  /** Predicted time to prefill `tokens` on worker `id`, without the fixed overhead. */
  prefillMs(id: string, tokens: number): number {
    return tokens * this.#fit(id).secondsPerToken * 1000;
  }

  tokensPerSecond(id: string): number {
    return 1 / this.#fit(id).secondsPerToken;
  }

  /** Prefill tokens the worker holds before it counts as saturated: configured, else learned speed x `prefillQueueMs`. */
  prefillCapacity(id: string): number {
    const s = this.#config.saturation;
    const configured = s.workers[id]?.prefillTokens ?? s.default.prefillTokens;
    if (configured !== undefined) return configured;
    return Math.max(1, (this.tokensPerSecond(id) * s.prefillQueueMs) / 1000);
  }

  /** A worker is saturated when its queued prefill or its decode blocks reached capacity. */
  saturated(w: WorkerView): boolean {
    // Without the estimated progress: the bound keeps engine queues short, and a speed learned
    // too high must not let more work in (the progress only sharpens stay-or-move predictions).
    return this.queuedPrefill(w, false) >= this.prefillCapacity(w.id) || this.#decodeFull(w);
  }

  #decodeFull(w: WorkerView): boolean {
    const s = this.#config.saturation;
    const blocks = s.workers[w.id]?.decodeBlocks ?? s.default.decodeBlocks;
    return blocks !== undefined && w.load.decodeBlocks >= blocks;
  }

  /**
   * May a request whose cache is on `w` join it although it is saturated, adding `tokens` to its
   * prefill queue? Only on prefill (a full decode side would preempt), and only while what it adds
   * stays within `saturation.affinityOverflow - 1` times the capacity: the delay it puts ahead of
   * later requests there, whatever their class.
   */
  mayJoin(w: WorkerView, tokens: number): boolean {
    const overflow = this.#config.saturation.affinityOverflow;
    if (overflow <= 1 || this.#decodeFull(w)) return false;
    return tokens <= this.prefillCapacity(w.id) * (overflow - 1);
  }

  explain(w: WorkerView, uncachedTokens: number, cachedBlocks: number): TtftPrediction {
    return {
      worker: w.id,
      predictedTtftMs: Math.round(this.predictMs(w, uncachedTokens)),
      queuedPrefillTokens: this.queuedPrefill(w),
      uncachedTokens,
      cachedBlocks,
      tokensPerSecond: Math.round(this.tokensPerSecond(w.id)),
      saturated: this.saturated(w),
    };
  }

  /** The learned models, for `/debug/flow`. */
  summary(): Record<string, { tokensPerSecond: number; overheadMs: number; observations: number }> {
    const out: Record<string, { tokensPerSecond: number; overheadMs: number; observations: number }> = {};
    for (const [id, f] of this.#fits)
      out[id] = {
        tokensPerSecond: Math.round(1 / f.secondsPerToken),
        overheadMs: Math.round(f.overheadS * 1000),
        observations: f.observations,
      };
    return out;
  }
}
