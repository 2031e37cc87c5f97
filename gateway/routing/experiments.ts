import { z } from 'zod';
import type { Matcher } from './policies/match.js';
import type { Pool } from './policies/pools.js';
import type { ShadowSet } from './shadow.js';
import type { Strategy } from './strategies/strategy.js';

/** Names that end up as metric label values and response headers: keep them plain. */
export const labelNameSchema = z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'use 1-64 letters, digits, . _ or -');

export const armConfigSchema = z.strictObject({
  name: labelNameSchema,
  /** Strategy name as registered (= file name = `strategy` metric label). */
  strategy: z.string().min(1),
  params: z.record(z.string(), z.unknown()).default({}),
  /** Relative share of the experiment's traffic. */
  weight: z.number().positive().default(1),
});

/**
 * What keeps a client in one arm: the session header, any header (a user id),
 * the client's address, or nothing (each request draws its arm).
 */
export const stickyBySchema = z.union([
  z.enum(['session', 'client-address', 'none']),
  z.strictObject({
    header: z
      .string()
      .min(1)
      .transform((h) => h.toLowerCase()),
  }),
]);
export type StickyBy = z.infer<typeof stickyBySchema>;

/** How many recent first-token times each arm keeps for its percentiles. */
export const TTFT_WINDOW = 1024;

/**
 * Counters of one arm, for `/debug/experiments`. Percentiles come from the last
 * `TTFT_WINDOW` first-token times (a ring buffer, so memory stays bounded);
 * the mean covers every request.
 */
export class ArmStats {
  requests = 0;
  errors = 0;
  ttftCount = 0;
  ttftSum = 0;
  /** Prompt and cached tokens of responses whose usage reported cached tokens. */
  usagePromptTokens = 0;
  cachedTokens = 0;
  predictedCachedTokens = 0;
  readonly #window = new Float64Array(TTFT_WINDOW);

  firstToken(seconds: number): void {
    this.#window[this.ttftCount % TTFT_WINDOW] = seconds;
    this.ttftCount++;
    this.ttftSum += seconds;
  }

  usage(promptTokens: number, cachedTokens: number): void {
    this.usagePromptTokens += promptTokens;
    this.cachedTokens += cachedTokens;
  }

  /** A request ended: 5xx (gateway or engine) counts as an error; 4xx and client aborts are the client's. */
  end(status: number): void {
    this.requests++;
    if (status >= 500) this.errors++;
  }

  /** `p` in [0, 1], nearest rank over the window; undefined before the first token. */
  ttftPercentile(p: number): number | undefined {
    const n = Math.min(this.ttftCount, TTFT_WINDOW);
    if (n === 0) return undefined;
    const sorted = this.#window.slice(0, n).sort();
    return sorted[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))];
  }

  summary(): Record<string, unknown> {
    const ms = (s: number | undefined) => (s === undefined ? null : Math.round(s * 1e6) / 1e3);
    return {
      requests: this.requests,
      errors: this.errors,
      errorRate: this.requests === 0 ? null : this.errors / this.requests,
      ttftMs: {
        count: this.ttftCount,
        mean: this.ttftCount === 0 ? null : ms(this.ttftSum / this.ttftCount),
        p50: ms(this.ttftPercentile(0.5)),
        p90: ms(this.ttftPercentile(0.9)),
      },
      cacheHitRatio: this.usagePromptTokens === 0 ? null : this.cachedTokens / this.usagePromptTokens,
      cachedTokens: this.cachedTokens,
      promptTokens: this.usagePromptTokens,
      predictedCachedTokens: this.predictedCachedTokens,
    };
  }
}

export interface Arm {
  readonly name: string;
  readonly strategy: Strategy;
  readonly weight: number;
  readonly stats: ArmStats;
}

export interface ExperimentSpec {
  readonly name: string;
  readonly match: Matcher;
  readonly arms: readonly Arm[];
  readonly stickyBy: StickyBy;
  readonly pool: Pool | undefined;
  readonly shadow: ShadowSet | undefined;
}

/** Where the sticky key comes from, per request. */
export interface StickyInput {
  readonly sessionKey: string | undefined;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly clientAddress: string | undefined;
}

/**
 * An A/B experiment: splits matching traffic between arms by weight. With a
 * sticky key the arm is a pure function of `name + key` (FNV-1a, then a mixer),
 * so it is the same after a restart and on every gateway replica.
 */
export class Experiment implements ExperimentSpec {
  readonly name: string;
  readonly match: Matcher;
  readonly arms: readonly Arm[];
  readonly stickyBy: StickyBy;
  readonly pool: Pool | undefined;
  readonly shadow: ShadowSet | undefined;
  readonly #cumulative: number[];

  constructor(spec: ExperimentSpec) {
    ({
      name: this.name,
      match: this.match,
      arms: this.arms,
      stickyBy: this.stickyBy,
      pool: this.pool,
      shadow: this.shadow,
    } = spec);
    let sum = 0;
    this.#cumulative = this.arms.map((a) => (sum += a.weight));
  }

  /** The sticky key of a request, or undefined when it has none (then the arm is drawn per request). */
  keyOf(input: StickyInput): string | undefined {
    const by = this.stickyBy;
    if (by === 'none') return undefined;
    if (by === 'session') return input.sessionKey || undefined;
    if (by === 'client-address') return input.clientAddress || undefined;
    const v = input.headers[by.header];
    return (Array.isArray(v) ? v[0] : v) || undefined;
  }

  /** Picks the arm: by hash of the key when there is one, else by `random()`. */
  assign(key: string | undefined, random: () => number): Arm {
    const u = key === undefined ? random() : unitHash(`${this.name}\0${key}`);
    const target = u * this.#cumulative[this.#cumulative.length - 1]!;
    for (let i = 0; i < this.arms.length; i++) if (target < this.#cumulative[i]!) return this.arms[i]!;
    return this.arms[this.arms.length - 1]!;
  }

  summary(): Record<string, unknown> {
    const total = this.#cumulative[this.#cumulative.length - 1]!;
    const arms = this.arms.map((a) => ({
      name: a.name,
      strategy: a.strategy.name,
      weight: a.weight,
      share: a.weight / total,
      ...a.stats.summary(),
    }));
    return {
      name: this.name,
      stickyBy: this.stickyBy,
      pool: this.pool?.name ?? null,
      arms,
      leader: leaders(this.arms),
    };
  }
}

/** Which arm leads on each measure, once every arm has data; null otherwise. */
function leaders(arms: readonly Arm[]): Record<string, string | null> {
  const best = (score: (s: ArmStats) => number | undefined, lowest: boolean): string | null => {
    let name: string | null = null;
    let top = 0;
    for (const a of arms) {
      const v = score(a.stats);
      if (v === undefined) return null;
      if (name === null || (lowest ? v < top : v > top)) [name, top] = [a.name, v];
    }
    return name;
  };
  return {
    ttftP50: best((s) => s.ttftPercentile(0.5), true),
    ttftP90: best((s) => s.ttftPercentile(0.9), true),
    cacheHitRatio: best((s) => (s.usagePromptTokens === 0 ? undefined : s.cachedTokens / s.usagePromptTokens), false),
  };
}

/**
 * A fixed hash of a string to [0, 1): 32-bit FNV-1a over its UTF-8 bytes, then
 * murmur3's finaliser so that keys differing in the last character spread over
 * the whole range. Stable across processes, platforms and releases.
 */
export function unitHash(s: string): number {
  let h = 0x811c9dc5;
  const byte = (b: number) => {
    h ^= b;
    h = Math.imul(h, 0x01000193);
  };
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) byte(c);
    else if (c < 0x800) {
      byte(0xc0 | (c >> 6));
      byte(0x80 | (c & 63));
    } else {
      if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length) {
        const lo = s.charCodeAt(i + 1);
        if (lo >= 0xdc00 && lo < 0xe000) {
          c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
          i++;
          byte(0xf0 | (c >> 18));
          byte(0x80 | ((c >> 12) & 63));
          byte(0x80 | ((c >> 6) & 63));
          byte(0x80 | (c & 63));
          continue;
        }
      }
      byte(0xe0 | (c >> 12));
      byte(0x80 | ((c >> 6) & 63));
      byte(0x80 | (c & 63));
    }
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return (h >>> 0) / 4294967296;
}
