import { performance } from 'node:perf_hooks';
import type { ArmStats } from '../routing/experiments.js';
import type { GatewayMetrics } from '../ops/metrics.js';

/** Hooks `forward` calls for every response body chunk and once at the end. */
export interface ResponseObserver {
  data(chunk: Buffer): void;
  end(status: number): void;
}

const CACHED = Buffer.from('"cached_tokens"');
const CACHE_READ = Buffer.from('"cache_read_input_tokens"');
const PROMPT = Buffer.from('"prompt_tokens"');
const INPUT = Buffer.from('"input_tokens"');
/**
 * The usage fields read, by API: chat and completions `prompt_tokens` and
 * `prompt_tokens_details.cached_tokens`; Responses `input_tokens` and
 * `input_tokens_details.cached_tokens`; Messages `input_tokens` (vLLM fills it
 * with the whole prompt) and `cache_read_input_tokens`.
 */
const NAMES = [CACHED, CACHE_READ, PROMPT, INPUT];
const isCached = (name: Buffer) => name === CACHED || name === CACHE_READ;

/** The name that shares `name`'s first `at` bytes and continues with `b`, if any. */
function switchName(name: Buffer, at: number, b: number): Buffer | undefined {
  outer: for (const other of NAMES) {
    if (other === name || other.length <= at || other[at] !== b) continue;
    for (let k = 1; k < at; k++) if (other[k] !== name[k]) continue outer;
    return other;
  }
  return undefined;
}
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
 * Finds the engine's prompt and cached token counts (the fields of `NAMES`)
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
          if (b !== this.#name[this.#matched]) {
            const other = switchName(this.#name, this.#matched, b);
            if (!other) {
              // The names hold no quote but their ends, so a quote is the only place a new match can start.
              state = b === QUOTE ? Name : Idle;
              this.#matched = 1;
              continue;
            }
            this.#name = other;
          }
          if (++this.#matched === this.#name.length) state = Colon;
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
          if (isCached(this.#name)) this.cachedTokens = this.#value;
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
