import type { Logger } from 'pino';
import { z } from 'zod';
import { createLeastLoadStrategy, leastLoadParamsSchema } from './least-load.js';
import { createPowerOfTwoStrategy, powerOfTwoParamsSchema } from './power-of-two.js';
import { createRandomStrategy, randomParamsSchema } from './random.js';
import { createRoundRobinStrategy, roundRobinParamsSchema } from './round-robin.js';
import { createSessionStrategy, sessionParamsSchema } from './session.js';
import { approxPrefixParamsSchema, createApproxPrefixStrategy } from './approx-prefix.js';
import { createDynamoStrategy, dynamoParamsSchema } from './dynamo.js';
import { createKvStrategy, kvParamsSchema } from './kv.js';
import { createLlmdPreciseStrategy, llmdPreciseParamsSchema } from './llmd-precise.js';
import { createSglangCacheAwareStrategy, sglangCacheAwareParamsSchema } from './sglang-cache-aware.js';
import type { Strategy, WorkerView } from './strategy.js';

/** What a strategy factory may use. Built once by the composition root (`startGateway`). */
export interface StrategyDeps {
  readonly random: () => number;
  readonly now: () => number;
  readonly log: Logger;
  /** Every configured worker, healthy or not (for strategies that keep per-worker state). */
  readonly workers: readonly WorkerView[];
  /** Default KV block size from the `models` config (16 unless set). */
  readonly blockSize: number;
  /**
   * Services the composition root built for strategies that need them, by name —
   * e.g. `kvIndexer` for `kv`. Passed through `startGateway(config, { services })`.
   */
  readonly services: Readonly<Record<string, unknown>>;
}

/** A registered strategy: its params schema (strict, with defaults) and its factory. */
export interface StrategyEntry<P = unknown> {
  readonly params: z.ZodType<P>;
  create(params: P, deps: StrategyDeps): Strategy;
}

/* eslint-disable @typescript-eslint/no-explicit-any, @typescript-eslint/no-unsafe-argument -- each entry pairs its own schema with its own factory */
const entries = new Map<string, StrategyEntry<any>>([
  ['random', { params: randomParamsSchema, create: (p) => createRandomStrategy(p) }],
  ['round-robin', { params: roundRobinParamsSchema, create: (p) => createRoundRobinStrategy(p) }],
  ['least-load', { params: leastLoadParamsSchema, create: (p) => createLeastLoadStrategy(p) }],
  ['power-of-two', { params: powerOfTwoParamsSchema, create: (p) => createPowerOfTwoStrategy(p) }],
  ['session', { params: sessionParamsSchema, create: (p) => createSessionStrategy(p) }],
  ['kv', { params: kvParamsSchema, create: (p, d) => createKvStrategy(p, d) }],
  ['approx-prefix', { params: approxPrefixParamsSchema, create: (p, d) => createApproxPrefixStrategy(p, d) }],
  ['dynamo', { params: dynamoParamsSchema, create: (p, d) => createDynamoStrategy(p, d) }],
  [
    'sglang-cache-aware',
    { params: sglangCacheAwareParamsSchema, create: (p, d) => createSglangCacheAwareStrategy(p, d) },
  ],
  ['llmd-precise', { params: llmdPreciseParamsSchema, create: (p, d) => createLlmdPreciseStrategy(p, d) }],
]);
/* eslint-enable @typescript-eslint/no-explicit-any, @typescript-eslint/no-unsafe-argument */

/**
 * Adds a strategy by name (= its file name = its metric label) at run time, for
 * tests and extensions; the built-in strategies are the static map above.
 */
export function registerStrategy<P>(name: string, entry: StrategyEntry<P>): void {
  entries.set(name, entry);
}

export function strategyNames(): string[] {
  return [...entries.keys()];
}

/** A bad strategy name or params; `path` is relative to the `routing` config section. */
export class StrategyConfigError extends Error {
  override name = 'StrategyConfigError';
  constructor(
    readonly path: (string | number)[],
    message: string,
  ) {
    super(message);
  }
}

/** Validates `params` against the strategy's schema, with defaults applied. */
export function parseStrategyParams(name: string, params: unknown): unknown {
  const entry = entries.get(name);
  if (!entry)
    throw new StrategyConfigError(['strategy'], `unknown strategy '${name}' (known: ${strategyNames().join(', ')})`);
  const parsed = entry.params.safeParse(params ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const keys = issue.code === 'unrecognized_keys' ? ` ${issue.keys.map((k) => `'${k}'`).join(', ')}` : '';
    throw new StrategyConfigError(['params', ...(issue.path as (string | number)[])], `${issue.message}${keys}`);
  }
  return parsed.data;
}

/** Builds the named strategy, validating its params first. */
export function createStrategy(name: string, params: unknown, deps: StrategyDeps): Strategy {
  const parsed = parseStrategyParams(name, params);
  return entries.get(name)!.create(parsed, deps);
}
