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
import type { Strategy, StrategyDeps } from './strategy.js';

/** A registered strategy: its params schema (strict, with defaults) and its factory. */
export interface StrategyEntry<P = unknown> {
  readonly params: z.ZodType<P>;
  create(params: P, deps: StrategyDeps): Strategy;
}

/** An entry whose factory is typed by its schema; the map holds them erased, and only `parseStrategyParams` output reaches them. */
function entry<P>(params: z.ZodType<P>, create: (p: P, deps: StrategyDeps) => Strategy): StrategyEntry {
  return { params, create: (p, d) => create(p as P, d) };
}

const entries = new Map<string, StrategyEntry>([
  ['random', entry(randomParamsSchema, (p) => createRandomStrategy(p))],
  ['round-robin', entry(roundRobinParamsSchema, (p) => createRoundRobinStrategy(p))],
  ['least-load', entry(leastLoadParamsSchema, (p) => createLeastLoadStrategy(p))],
  ['power-of-two', entry(powerOfTwoParamsSchema, (p) => createPowerOfTwoStrategy(p))],
  ['session', entry(sessionParamsSchema, (p) => createSessionStrategy(p))],
  ['kv', entry(kvParamsSchema, (p, d) => createKvStrategy(p, d))],
  ['approx-prefix', entry(approxPrefixParamsSchema, (p, d) => createApproxPrefixStrategy(p, d))],
  ['dynamo', entry(dynamoParamsSchema, (p, d) => createDynamoStrategy(p, d))],
  ['sglang-cache-aware', entry(sglangCacheAwareParamsSchema, (p, d) => createSglangCacheAwareStrategy(p, d))],
  ['llmd-precise', entry(llmdPreciseParamsSchema, (p, d) => createLlmdPreciseStrategy(p, d))],
]);

/**
 * Adds a strategy by name (= its file name = its metric label) at run time, for
 * tests and extensions; the built-in strategies are the static map above.
 */
export function registerStrategy<P>(name: string, e: StrategyEntry<P>): void {
  entries.set(
    name,
    entry(e.params, (p, d) => e.create(p, d)),
  );
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
