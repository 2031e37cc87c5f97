import { z } from 'zod';
import { armConfigSchema, labelNameSchema, stickyBySchema } from './experiments.js';
import { matchConfigSchema } from './policies/match.js';
import { overridesConfigSchema } from './policies/overrides.js';
import { poolConfigSchema } from './policies/pools.js';
import { shadowConfigSchema, type ShadowConfig } from './shadow.js';
import { parseStrategyParams, StrategyConfigError } from './strategies/registry.js';

/**
 * A policy: when `match` holds, route with `strategy` (and its `params`) among
 * the workers of `pool`. Without `strategy` the default one is used, so a policy
 * may only pick a pool.
 */
export const policyConfigSchema = z.strictObject({
  /** Shown in `/debug/route` and logs. */
  name: labelNameSchema.optional(),
  match: matchConfigSchema.prefault({}),
  strategy: z.string().min(1).optional(),
  params: z.record(z.string(), z.unknown()).optional(),
  /** Name of an entry in `routing.pools`. */
  pool: z.string().min(1).optional(),
});
export type PolicyConfig = z.infer<typeof policyConfigSchema>;

/** An A/B experiment over the requests that `match` selects; see `gateway/routing/experiments.ts`. */
export const experimentConfigSchema = z.strictObject({
  name: labelNameSchema,
  match: matchConfigSchema.prefault({}),
  arms: z.array(armConfigSchema).min(1),
  stickyBy: stickyBySchema.default('session'),
  pool: z.string().min(1).optional(),
  /** Shadow strategies for this experiment's requests (replaces `routing.shadow` for them). */
  shadow: shadowConfigSchema.optional(),
});
export type ExperimentConfig = z.infer<typeof experimentConfigSchema>;

/**
 * How requests are routed. Order per request: overrides (worker pin, strategy
 * header), then `policies` (first match wins), then `experiments` (first match
 * wins), then the default `strategy`. A config with only `strategy` routes as before.
 */
const routingBaseSchema = z.strictObject({
  /** Default strategy name as registered in `strategies/registry.ts` (= file name = metric label). */
  strategy: z.string().min(1).default('least-load'),
  /** The strategy's parameters; validated by the strategy's own schema at start-up. */
  params: z.record(z.string(), z.unknown()).default({}),
  /** Header whose value keys session affinity (lower-cased on load). */
  sessionHeader: z
    .string()
    .min(1)
    .default('x-session-id')
    .transform((h) => h.toLowerCase()),
  /** Named subsets of the fleet, by labels or ids. */
  pools: z.record(labelNameSchema, poolConfigSchema).default({}),
  policies: z.array(policyConfigSchema).default([]),
  experiments: z.array(experimentConfigSchema).default([]),
  overrides: overridesConfigSchema.prefault({}),
  /** Shadow strategies for every routed request (sampled). */
  shadow: shadowConfigSchema.optional(),
});
export const routingConfigSchema = routingBaseSchema.superRefine(checkReferences);
export type RoutingConfig = z.infer<typeof routingConfigSchema>;

type Path = (string | number)[];

/** Strategy names and params, pool names and unique names: everything checkable without the fleet. */
function checkReferences(routing: z.output<typeof routingBaseSchema>, ctx: z.RefinementCtx): void {
  const issue = (path: Path, message: string) => ctx.addIssue({ code: 'custom', path, message });
  const strategy = (at: Path, name: string, params: unknown, nameAt: Path = [...at, 'strategy']) => {
    try {
      parseStrategyParams(name, params);
    } catch (err) {
      if (!(err instanceof StrategyConfigError)) throw err;
      issue(err.path[0] === 'strategy' ? nameAt : [...at, ...err.path], err.message);
    }
  };
  const pool = (at: Path, name: string | undefined) => {
    if (name !== undefined && !(name in routing.pools)) {
      const known = Object.keys(routing.pools);
      issue(
        [...at, 'pool'],
        `unknown pool '${name}' (${known.length ? `pools: ${known.join(', ')}` : 'no routing.pools are defined'})`,
      );
    }
  };
  const shadow = (at: Path, s: ShadowConfig | undefined) => {
    const names = new Set<string>();
    s?.strategies.forEach((e, j) => {
      const entryAt = [...at, 'shadow', 'strategies', j];
      const name = typeof e === 'string' ? e : (e.name ?? e.strategy);
      if (names.has(name)) issue(entryAt, `duplicate shadow name '${name}' (give one of them a name:)`);
      names.add(name);
      if (typeof e === 'string') strategy(entryAt, e, {}, entryAt);
      else strategy(entryAt, e.strategy, e.params);
    });
  };

  routing.policies.forEach((p, i) => {
    if (p.strategy !== undefined) strategy(['policies', i], p.strategy, p.params);
    else if (p.params !== undefined)
      issue(
        ['policies', i, 'params'],
        'params need a strategy (without one the policy uses routing.strategy and its params)',
      );
    pool(['policies', i], p.pool);
  });
  const experiments = new Set<string>();
  routing.experiments.forEach((e, i) => {
    if (experiments.has(e.name)) issue(['experiments', i, 'name'], `duplicate experiment name '${e.name}'`);
    experiments.add(e.name);
    const arms = new Set<string>();
    e.arms.forEach((a, j) => {
      if (arms.has(a.name)) issue(['experiments', i, 'arms', j, 'name'], `duplicate arm name '${a.name}'`);
      arms.add(a.name);
      strategy(['experiments', i, 'arms', j], a.strategy, a.params);
    });
    pool(['experiments', i], e.pool);
    shadow(['experiments', i], e.shadow);
  });
  shadow([], routing.shadow);
}
