import { performance } from 'node:perf_hooks';
import type { ArmStats } from '../routing/experiments.js';
import type { GatewayMetrics } from '../ops/metrics.js';

/** Hooks `forward` calls for every response body chunk and once at the end. */
export interface ResponseObserver {
  data(chunk: Buffer): void;
  end(status: number): void;
}

const CACHED = Buffer.from('"cached_tokens"');
const PROMPT = Buffer.from('"prompt_tokens"');
const QUOTE = 0x22;
/** Remaining bytes above which an idle scan hands over to the native quote search. */
const LONG_RUN = 256;

/** Scanner states: outside a name, inside a quoted name, before the colon, before the value, inside the digits. */
const Idle = 0,
  Name = 1,
  Colon = 2,
  Value = 3,
  Digits = 4;

/**
 * Finds the engine's `usage.prompt_tokens` and `usage.prompt_tokens_details.cached_tokens`
 * in a JSON body or an SSE stream without buffering it: a byte-level state
 * machine whose state survives chunk boundaries, so a field split across two
 * chunks is still read and nothing is copied. The last value of each field wins
 * (the usage chunk comes last in a stream). A quoted field name cannot occur
 * unescaped inside a JSON string, so generated text never fakes a match.
 */
export class UsageSniffer {
  promptTokens: number | undefined;
  cachedTokens: number | undefined;
  #state: number = Idle;
  /** The name being matched (after its first letter) and how many bytes of it matched. */
  #name: Buffer = CACHED;
  #matched = 0;
  #value = 0;

  scan(chunk: Buffer): void {
    let state = this.#state;
    bytes: for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      switch (state) {
        case Idle:
          if (b !== QUOTE && chunk.length - i > LONG_RUN) {
            // Long generated text has no raw quotes: let the native search skip it.
            const next = chunk.indexOf(QUOTE, i);
            if (next === -1) break bytes;
            i = next;
          }
          if (chunk[i] === QUOTE) {
            state = Name;
            this.#matched = 1;
          }
          continue;
        case Name:
          if (this.#matched === 1) {
            this.#name = b === 0x63 ? CACHED : PROMPT; // 'c' or 'p'
            if (b !== 0x63 && b !== 0x70) {
              state = b === QUOTE ? Name : Idle;
              continue;
            }
          }
          if (b === this.#name[this.#matched]) {
            if (++this.#matched === this.#name.length) state = Colon;
          } else {
            // The names hold no quote but their ends, so a quote is the only place a new match can start.
            state = b === QUOTE ? Name : Idle;
            this.#matched = 1;
          }
          continue;
        case Colon:
          if (b === 0x3a) state = Value;
          else if (!isSpace(b)) state = b === QUOTE ? this.#restart() : Idle;
          continue;
        case Value:
          if (b >= 0x30 && b <= 0x39) {
            this.#value = b - 0x30;
            state = Digits;
          } else if (!isSpace(b)) state = b === QUOTE ? this.#restart() : Idle;
          continue;
        case Digits:
          if (b >= 0x30 && b <= 0x39) {
            this.#value = this.#value * 10 + (b - 0x30);
            continue;
          }
          if (this.#name === CACHED) this.cachedTokens = this.#value;
          else this.promptTokens = this.#value;
          state = b === QUOTE ? this.#restart() : Idle;
          continue;
      }
    }
    this.#state = state;
  }

  #restart(): number {
    this.#matched = 1;
    return Name;
  }
}

const isSpace = (b: number) => b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;

/**
 * Per-request observer: the experiment arm's first-token time and outcome, and
 * the engine's actual cached tokens (labelled by strategy and arm) when it reports them.
 */
export class RequestOutcome implements ResponseObserver {
  readonly #sniffer = new UsageSniffer();
  #first = true;

  readonly #metrics: GatewayMetrics;
  readonly #strategy: string;
  readonly #arm: string;
  readonly #stats: ArmStats | undefined;
  readonly #started: number;

  /** `started` is `performance.now()` when the request arrived. */
  constructor(metrics: GatewayMetrics, strategy: string, arm: string, stats: ArmStats | undefined, started: number) {
    this.#metrics = metrics;
    this.#strategy = strategy;
    this.#arm = arm;
    this.#stats = stats;
    this.#started = started;
  }

  data(chunk: Buffer): void {
    if (this.#first) {
      this.#first = false;
      this.#stats?.firstToken((performance.now() - this.#started) / 1000);
    }
    this.#sniffer.scan(chunk);
  }

  end(status: number): void {
    const { promptTokens, cachedTokens } = this.#sniffer;
    if (cachedTokens !== undefined && promptTokens !== undefined) {
      this.#metrics.actualCached(this.#strategy, this.#arm, promptTokens, cachedTokens);
      this.#stats?.usage(promptTokens, cachedTokens);
    }
    this.#stats?.end(status);
  }
}
