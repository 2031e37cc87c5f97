import { performance } from 'node:perf_hooks';
import type { ArmStats } from './experiments.js';
import type { GatewayMetrics } from './metrics.js';

/** Hooks `forward` calls for every response body chunk and once at the end. */
export interface ResponseObserver {
  data(chunk: Buffer): void;
  end(status: number): void;
}

const CACHED = Buffer.from('"cached_tokens"');
const PROMPT = Buffer.from('"prompt_tokens"');
/** Bytes kept from the end of the stream so far, to find a field split across two chunks. */
const CARRY = 64;

/**
 * Finds the engine's `usage.prompt_tokens` and `usage.prompt_tokens_details.cached_tokens`
 * in a JSON body or an SSE stream without buffering it: each chunk is searched
 * natively, plus a small window over the seam with the previous chunk. The last
 * complete value of each field wins (the usage chunk comes last in a stream).
 * A quoted field name cannot occur unescaped inside a JSON string, so generated
 * text never fakes a match.
 */
export class UsageSniffer {
  promptTokens: number | undefined;
  cachedTokens: number | undefined;
  readonly #seam = Buffer.allocUnsafe(CARRY * 2);
  #carried = 0;

  scan(chunk: Buffer): void {
    const carried = this.#carried;
    if (carried > 0) {
      const head = Math.min(chunk.length, CARRY);
      chunk.copy(this.#seam, carried, 0, head);
      this.#find(this.#seam.subarray(0, carried + head), carried);
    }
    this.#find(chunk, chunk.length);
    if (chunk.length >= CARRY) {
      chunk.copy(this.#seam, 0, chunk.length - CARRY);
      this.#carried = CARRY;
    } else {
      const keep = Math.min(carried, CARRY - chunk.length);
      this.#seam.copyWithin(0, carried - keep, carried);
      chunk.copy(this.#seam, keep);
      this.#carried = keep + chunk.length;
    }
  }

  /** Reads both fields from matches that start before `startsBefore`. */
  #find(buf: Buffer, startsBefore: number): void {
    const c = lastValue(buf, CACHED, startsBefore);
    if (c !== undefined) this.cachedTokens = c;
    const p = lastValue(buf, PROMPT, startsBefore);
    if (p !== undefined) this.promptTokens = p;
  }
}

/** The value of the last complete `"name": 123` in `buf` whose name starts before `startsBefore`. */
function lastValue(buf: Buffer, name: Buffer, startsBefore: number): number | undefined {
  let found: number | undefined;
  let at = buf.indexOf(name);
  while (at !== -1 && at < startsBefore) {
    const v = numberAfter(buf, at + name.length);
    if (v !== undefined) found = v;
    at = buf.indexOf(name, at + name.length);
  }
  return found;
}

/** Parses `\s*:\s*digits` at `i`; undefined when absent or when the digits may continue past the buffer. */
function numberAfter(buf: Buffer, i: number): number | undefined {
  while (i < buf.length && isSpace(buf[i]!)) i++;
  if (buf[i] !== 0x3a) return undefined;
  i++;
  while (i < buf.length && isSpace(buf[i]!)) i++;
  let n = 0;
  let digits = 0;
  for (; i < buf.length; i++) {
    const b = buf[i]!;
    if (b < 0x30 || b > 0x39) break;
    n = n * 10 + (b - 0x30);
    digits++;
  }
  if (digits === 0 || i >= buf.length) return undefined;
  return n;
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
