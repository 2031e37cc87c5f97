import type { ResponseObserver } from '../proxy/usage-sniffer.js';

const COMPLETION_TOKENS = /"completion_tokens"\s*:\s*(\d+)/;

/** What a released request's response tells flow control: its TTFT and, at the end, its TPOT. */
export interface ResponseTimes {
  /** First body byte; `atMs` on the flow's clock. */
  firstByte(atMs: number): void;
  /** The response ended; `completionTokens` when the engine reported usage. */
  ended(atMs: number, status: number, completionTokens: number | undefined): void;
}

/**
 * Wraps the request's own observer: passes every chunk on, and tells flow control
 * when the first byte came and how many tokens the engine said it generated (read
 * from the last chunks only, where usage is reported).
 */
export class FlowObserver implements ResponseObserver {
  readonly #inner: ResponseObserver;
  readonly #times: ResponseTimes;
  readonly #now: () => number;
  #first = true;
  #tail = '';

  constructor(inner: ResponseObserver, times: ResponseTimes, now: () => number) {
    this.#inner = inner;
    this.#times = times;
    this.#now = now;
  }

  data(chunk: Buffer): void {
    if (this.#first) {
      this.#first = false;
      this.#times.firstByte(this.#now());
    }
    // Usage sits in the final event (streams) or near the end of the body: keep only a tail.
    const text = chunk.length > 2048 ? chunk.toString('utf8', chunk.length - 2048) : chunk.toString('utf8');
    this.#tail = (this.#tail + text).slice(-2048);
    this.#inner.data(chunk);
  }

  end(status: number): void {
    const m = COMPLETION_TOKENS.exec(this.#tail);
    this.#times.ended(this.#now(), status, m ? Number(m[1]) : undefined);
    this.#inner.end(status);
  }
}
