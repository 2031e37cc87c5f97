import type { ActiveBlocksView } from '../routing/strategies/strategy.js';

/** What the router knows of a request's prompt beyond its length (absent: nothing cached, no hashes). */
export interface TicketPrompt {
  uncachedTokens?: number | undefined;
  hashes?: readonly bigint[] | undefined;
  /** Blocks of the prompt alone; the ticket's other blocks are expected output. */
  promptBlocks?: number | undefined;
}

/** The part of a load ticket this tracker takes and gives back. */
export interface ActiveShare {
  readonly promptTokens: number;
  /** Its place in the worker's prefill line, until its first token. */
  readonly inPrefill: PrefillEntry;
  /** Prompt tokens not predicted cached on the worker: what its prefill still has to compute. */
  readonly uncachedTokens: number;
  readonly hashes: readonly bigint[];
  readonly outputBlocks: number;
  readonly phase: 'prefill' | 'decode' | 'done';
}

export interface PrefillEntry {
  readonly uncachedTokens: number;
}

/**
 * Per-worker record of what in-flight requests hold, at the grain Dynamo's
 * active-sequence tracking uses: prompt tokens still to compute (the uncached
 * part, until the first token) and the prompt's block hashes, each counted once
 * however many in-flight requests share it (until the request ends).
 * Reference-counted so a prefix shared by several requests leaves only with the last.
 */
export class ActiveSequences implements ActiveBlocksView {
  prefillUncachedTokens = 0;
  /** The whole prompts of those requests, cached part included (what `WorkerLoad.prefillTokens` counts locally). */
  prefillPromptTokens = 0;
  /** Expected output blocks of in-flight requests (for Dynamo's optional output-block tracking). */
  outputBlocks = 0;
  readonly #refs = new Map<bigint, number>();
  /** Requests awaiting their first token, in dispatch order: the engine prefills them first come, first served. */
  readonly #line = new Set<PrefillEntry>();
  /** `performance.now()` when the line last went from empty to busy, and the uncached tokens that left it since. */
  #busySince = 0;
  #leftSinceBusy = 0;

  get uniqueBlocks(): number {
    return this.#refs.size;
  }

  has(hash: bigint): boolean {
    return this.#refs.has(hash);
  }

  start(promptTokens: number, blocks: number, prompt: TicketPrompt): Omit<ActiveShare, 'phase'> {
    const uncachedTokens = Math.min(promptTokens, Math.max(0, prompt.uncachedTokens ?? promptTokens));
    const hashes = prompt.hashes ?? [];
    const outputBlocks = Math.max(0, blocks - (prompt.promptBlocks ?? blocks));
    this.prefillUncachedTokens += uncachedTokens;
    this.prefillPromptTokens += promptTokens;
    this.outputBlocks += outputBlocks;
    for (const h of hashes) this.#refs.set(h, (this.#refs.get(h) ?? 0) + 1);
    const inPrefill: PrefillEntry = { uncachedTokens };
    if (this.#line.size === 0) {
      this.#busySince = performance.now();
      this.#leftSinceBusy = 0;
    }
    this.#line.add(inPrefill);
    return { promptTokens, uncachedTokens, hashes, outputBlocks, inPrefill };
  }

  /**
   * Uncached prefill tokens still to compute, `now` (`performance.now()`), at `tokensPerMs`: the
   * line's total less the progress on its head, the one request being prefilled (the time the line
   * has been busy at that speed, less what already left it). The estimate never goes beyond the
   * head, so a speed learned too high cannot make a busy worker look idle.
   */
  prefillRemaining(now: number, tokensPerMs: number): number {
    const head = this.#line.values().next().value;
    if (!head) return this.prefillUncachedTokens;
    const progress = tokensPerMs * (now - this.#busySince) - this.#leftSinceBusy;
    return this.prefillUncachedTokens - Math.min(head.uncachedTokens, Math.max(0, progress));
  }

  /** Call before the ticket leaves prefill. */
  firstToken(t: ActiveShare): void {
    if (t.phase !== 'prefill') return;
    this.prefillUncachedTokens -= t.uncachedTokens;
    this.prefillPromptTokens -= t.promptTokens;
    if (this.#line.delete(t.inPrefill)) this.#leftSinceBusy += t.uncachedTokens;
  }

  /** Call once, before the ticket is marked done. */
  finish(t: ActiveShare): void {
    if (t.phase === 'done') return;
    this.firstToken(t);
    this.outputBlocks -= t.outputBlocks;
    for (const h of t.hashes) {
      const n = this.#refs.get(h);
      if (n === undefined) continue;
      if (n <= 1) this.#refs.delete(h);
      else this.#refs.set(h, n - 1);
    }
  }
}
