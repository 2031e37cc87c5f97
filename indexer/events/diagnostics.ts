import type { Logger } from 'pino';
import type { SkipCounts } from './decode-msgpack.js';

/** Why a whole batch was not applied: its sequence number is beyond anything an engine counts to. */
export type BatchSkipReason = 'bad-seq';
export type SkipCountsAll = SkipCounts & Partial<Record<BatchSkipReason, number>>;

/** vLLM and SGLang count from 0 per process; TRT-LLM ids are ~1.8e18 (time_ns). 2^63 and up is corruption. */
export const MAX_PLAUSIBLE_SEQ = (1n << 63n) - 1n;
/** A batch stamped further than this from our clock says nothing about lag (clock skew is seconds, not days). */
const MAX_PLAUSIBLE_SKEW_MS = 24 * 3600 * 1000;

export interface WarnLimit {
  /** Warnings allowed per window; default 5. */
  burst?: number;
  /** Window length; default 60 s. */
  windowMs?: number;
}

/**
 * Per-source bookkeeping of what went wrong, shared by every transport:
 * skipped events by reason, implausible timestamps, and a rate-limited warning
 * log (a worker spewing garbage must not flood the log: at most `burst`
 * warnings a window, and the next one after a quiet spell says how many were
 * suppressed).
 */
export class SourceDiagnostics {
  readonly skipped: SkipCountsAll = {};
  suppressedWarnings = 0;
  ignoredTimestamps = 0;
  #pendingSuppressed = 0;
  #windowStart = -Infinity;
  #inWindow = 0;
  readonly #burst: number;
  readonly #windowMs: number;

  readonly #workerId: string;
  readonly #log: Logger | undefined;
  readonly #now: () => number;

  constructor(workerId: string, log: Logger | undefined, now: () => number, limit: WarnLimit = {}) {
    this.#workerId = workerId;
    this.#log = log;
    this.#now = now;
    this.#burst = limit.burst ?? 5;
    this.#windowMs = limit.windowMs ?? 60_000;
  }

  addSkips(counts: SkipCountsAll): void {
    for (const [k, v] of Object.entries(counts) as [keyof SkipCountsAll, number][])
      this.skipped[k] = (this.skipped[k] ?? 0) + v;
  }

  skip(reason: keyof SkipCountsAll): void {
    this.skipped[reason] = (this.skipped[reason] ?? 0) + 1;
  }

  get skippedTotal(): number {
    let n = 0;
    for (const v of Object.values(this.skipped)) n += v;
    return n;
  }

  /** Receive time minus engine time in ms, or null when the engine's stamp is nonsense (then counted). */
  lagMs(receivedAt: number, tsSeconds: number): number | null {
    const lag = receivedAt - tsSeconds * 1000;
    if (Number.isFinite(lag) && Math.abs(lag) <= MAX_PLAUSIBLE_SKEW_MS) return lag;
    this.ignoredTimestamps++;
    return null;
  }

  warn(fields: Record<string, unknown>, msg: string): void {
    const t = this.#now();
    if (t - this.#windowStart >= this.#windowMs) {
      this.#windowStart = t;
      this.#inWindow = 0;
    }
    if (this.#inWindow >= this.#burst) {
      this.suppressedWarnings++;
      this.#pendingSuppressed++;
      return;
    }
    this.#inWindow++;
    const suppressed = this.#pendingSuppressed;
    this.#pendingSuppressed = 0;
    this.#log?.warn({ worker: this.#workerId, ...fields, ...(suppressed > 0 ? { suppressed } : {}) }, msg);
  }
}
