/** Log-spaced buckets from 10 ms to ~2.8 h, ×1.25 apart: a fixed 58 counters per tool. */
const MIN_MS = 10;
const RATIO = 1.25;
const BUCKETS = 58;
const LOG_RATIO = Math.log(RATIO);

/**
 * One tool's return delays: a fixed-size log histogram, so memory stays
 * bounded whatever the traffic, and a quantile is read to within one bucket
 * (±12%). Older observations are halved every `halfLife` samples, so a tool
 * that gets slower is followed instead of averaged away.
 */
export class ToolLatency {
  readonly #counts = new Float64Array(BUCKETS);
  #total = 0;
  #samples = 0;
  readonly #halfLife: number;

  constructor(halfLife = 1000) {
    this.#halfLife = halfLife;
  }

  get samples(): number {
    return this.#samples;
  }

  observe(ms: number): void {
    const b = Math.min(BUCKETS - 1, Math.max(0, Math.floor(Math.log(Math.max(ms, MIN_MS) / MIN_MS) / LOG_RATIO)));
    this.#counts[b]! += 1;
    this.#total += 1;
    if (++this.#samples % this.#halfLife === 0) {
      for (let i = 0; i < BUCKETS; i++) this.#counts[i]! /= 2;
      this.#total /= 2;
    }
  }

  /** The q-quantile in ms (a bucket's upper edge); undefined before any sample. */
  quantile(q: number): number | undefined {
    if (this.#total === 0) return undefined;
    const want = q * this.#total;
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.#counts[i]!;
      if (seen >= want) return MIN_MS * RATIO ** (i + 1);
    }
    return MIN_MS * RATIO ** BUCKETS;
  }
}

/** Bytes a histogram holds, for the bounded-memory claim in the README. */
export const TOOL_LATENCY_BYTES = BUCKETS * 8;
