/**
 * How long one scheduler step takes, in the spirit of Dynamo's mocker: a
 * forward pass costs a quadratic in the new prefill tokens it computes
 * (attention is quadratic, the MLP linear, plus a fixed launch overhead) and
 * a decode term that grows with the KV cache in use (decode is bound by
 * reading the cache). All durations are divided by `speedup`.
 *
 *   step_ms = [T > 0] · (prefillA·T² + prefillB·T + prefillC)
 *           + [D > 0] · (decodeBaseMs + decodeKvMs · kv_usage)
 *
 * T = new prefill tokens in the step (cached prefix tokens are not computed),
 * D = sequences decoding one token in the step, kv_usage = used blocks / total
 * (0..1) at the start of the step. Defaults: a 4096-token cold prefill takes
 * ~86 ms, a warm one (4080 tokens cached) ~17 ms, an idle-cache decode step
 * 6 ms, a full-cache decode step 18 ms.
 */
export interface TimingModel {
  prefillA: number;
  prefillB: number;
  prefillC: number;
  decodeBaseMs: number;
  decodeKvMs: number;
  /** Divides every duration: 60 replays an hour in a minute. */
  speedup: number;
}

export const DEFAULT_TIMING: TimingModel = {
  prefillA: 4.21e-7,
  prefillB: 0.01518,
  prefillC: 16.5,
  decodeBaseMs: 6,
  decodeKvMs: 12,
  speedup: 1,
};

/** Step duration in (real) milliseconds. */
export function stepMs(model: TimingModel, prefillTokens: number, decodeSeqs: number, kvUsage: number): number {
  let ms = 0;
  if (prefillTokens > 0)
    ms += model.prefillA * prefillTokens * prefillTokens + model.prefillB * prefillTokens + model.prefillC;
  if (decodeSeqs > 0) ms += model.decodeBaseMs + model.decodeKvMs * kvUsage;
  return ms / model.speedup;
}
