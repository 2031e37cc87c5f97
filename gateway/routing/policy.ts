import { ConfigError } from '../../config/errors.js';
import { badRequest } from '../front/errors.js';
import { ArmStats, Experiment, type Arm } from './experiments.js';
import { compileMatch, needsExactTokens, type Matcher, type MatchInput } from './policies/match.js';
import { headerValue, pinnedStrategy, pinnedWorker, STRATEGY_HEADER, WORKER_HEADER } from './policies/overrides.js';
import { PoolError, resolvePools, type Pool } from './policies/pools.js';
import type { InferenceRequest } from '../front/request.js';
import type { RoutingConfig } from './routing-config.js';
import { shadowEntries, type ShadowConfig, type ShadowSet } from './shadow.js';
import { createStrategy, strategyNames } from './strategies/registry.js';
import type { Strategy, StrategyDeps, WorkerView } from './strategies/strategy.js';

/** Everything a policy may look at, built once per request by the pipeline. */
export interface PolicyInput extends MatchInput {
  readonly request: InferenceRequest;
  /** The session header's value, when sessions are honoured. */
  readonly sessionKey: string | undefined;
  readonly clientAddress: string | undefined;
}

/** The outcome of the policy step: which strategy routes, among which workers, in which arm. */
export interface Selection {
  readonly strategy: Strategy;
  /** The A/B arm (`x-kvgate-arm`, `arm` metric label); `none` outside experiments. */
  readonly arm: string;
  /** Set inside an experiment: the arm's counters for `/debug/experiments`. */
  readonly armStats: ArmStats | undefined;
  /** Restricts the candidates to a pool; undefined = every worker serving the model. */
  readonly pool: Pool | undefined;
  readonly shadow: ShadowSet | undefined;
  /** Which rule decided, e.g. `default`, `policies[0]`, `experiment:kv-vs-rr`, `override:strategy`. */
  readonly rule: string;
}

/**
 * The first step of the pipeline: decides how a request is routed, or refuses
 * it by throwing a `GatewayError` (a bad override, quotas, tenant rules...).
 */
export interface Policy {
  readonly name: string;
  /** Set when some rule compares exact prompt tokens: the pipeline then tokenizes before `select`. */
  readonly needsExactTokens?: boolean;
  select(input: PolicyInput): Selection;
  /** `/debug/experiments` view. */
  summary?(): Record<string, unknown>;
}

const selection = (strategy: Strategy, rule: string, pool?: Pool, shadow?: ShadowSet): Selection => ({
  strategy,
  arm: 'none',
  armStats: undefined,
  pool,
  shadow,
  rule,
});

/** Every request goes to one strategy. */
export function createDefaultPolicy(strategy: Strategy, shadow?: ShadowSet): Policy {
  const s = selection(strategy, 'default', undefined, shadow);
  return { name: 'default', select: () => s };
}

/** What `createRoutingPolicy` needs besides the routing config. */
export interface RoutingPolicyDeps {
  readonly routing: RoutingConfig;
  readonly strategyDeps: StrategyDeps;
  /** A configured worker by id, with its availability, for worker pins. */
  readonly workerById: (id: string) => (WorkerView & { readonly available: boolean }) | undefined;
  /** `admin.token`: a worker pin is honoured only with it. */
  readonly adminToken: string | undefined;
  /** The default strategy when the caller built it already. */
  readonly defaultStrategy?: Strategy;
}

/** A routing setup problem found at start-up (needs the fleet to see): one line naming the key. */
export class RoutingSetupError extends ConfigError {
  override name = 'RoutingSetupError';
}

interface Rule {
  readonly matches: Matcher;
  readonly selection?: Selection;
  readonly experiment?: Experiment;
}

/**
 * Builds the config's policy: overrides, then `policies` and `experiments` in
 * order (first match wins), then the default strategy. Every strategy instance
 * (default, per policy, per arm, per shadow entry) is its own, so stateful
 * strategies (round-robin's cursor, approx-prefix's table) never share state.
 */
export function createRoutingPolicy(d: RoutingPolicyDeps): Policy {
  const { routing } = d;
  if (routing.overrides.workerHeader && d.adminToken === undefined) {
    throw new RoutingSetupError(
      `kvgate: routing.overrides.workerHeader: needs admin.token (a worker pin is honoured only with ${WORKER_HEADER} plus the admin token)`,
    );
  }
  let pools: Map<string, Pool>;
  try {
    pools = resolvePools(routing.pools, d.strategyDeps.workers);
  } catch (err) {
    if (err instanceof PoolError) throw new RoutingSetupError(`kvgate: routing.${err.path.join('.')}: ${err.message}`);
    throw err;
  }
  const build = (name: string, params: unknown) => createStrategy(name, params, d.strategyDeps);
  const buildShadow = (s: ShadowConfig | undefined): ShadowSet | undefined =>
    s && {
      sampleRate: s.sampleRate,
      entries: shadowEntries(s).map((e) => ({ name: e.name, strategy: build(e.strategy, e.params) })),
    };
  const globalShadow = buildShadow(routing.shadow);
  const defaultStrategy = d.defaultStrategy ?? build(routing.strategy, routing.params);
  const fallback = selection(defaultStrategy, 'default', undefined, globalShadow);

  const rules: Rule[] = routing.policies.map((p, i) => ({
    matches: compileMatch(p.match),
    selection: selection(
      p.strategy ? build(p.strategy, p.params) : defaultStrategy,
      p.name ?? `policies[${i}]`,
      p.pool ? pools.get(p.pool) : undefined,
      globalShadow,
    ),
  }));
  const experiments = routing.experiments.map(
    (e) =>
      new Experiment({
        name: e.name,
        match: compileMatch(e.match),
        arms: e.arms.map((a): Arm => ({
          name: a.name,
          strategy: build(a.strategy, a.params),
          weight: a.weight,
          stats: new ArmStats(),
        })),
        stickyBy: e.stickyBy,
        pool: e.pool ? pools.get(e.pool) : undefined,
        shadow: buildShadow(e.shadow) ?? globalShadow,
      }),
  );
  for (const experiment of experiments) rules.push({ matches: experiment.match, experiment });
  const armSelections = new Map<Arm, Selection>();
  for (const e of experiments) {
    for (const a of e.arms)
      armSelections.set(a, {
        strategy: a.strategy,
        arm: a.name,
        armStats: a.stats,
        pool: e.pool,
        shadow: e.shadow,
        rule: `experiment:${e.name}`,
      });
  }

  // Strategies forced by header: the default instance for its own name, else one instance per name with default params.
  const forced = new Map<string, Selection>([
    [defaultStrategy.name, selection(defaultStrategy, 'override:strategy', undefined, globalShadow)],
  ]);
  const known = new Set(strategyNames());
  const forcedSelection = (name: string): Selection => {
    let s = forced.get(name);
    if (!s) {
      if (!known.has(name))
        throw badRequest(
          `${STRATEGY_HEADER}: unknown strategy '${name}' (known: ${[...known].join(', ')})`,
          STRATEGY_HEADER,
          'unknown_strategy',
        );
      forced.set(name, (s = selection(build(name, {}), 'override:strategy', undefined, globalShadow)));
    }
    return s;
  };

  const exact =
    routing.policies.some((p) => needsExactTokens(p.match)) ||
    routing.experiments.some((e) => needsExactTokens(e.match));
  return {
    name: 'routing',
    needsExactTokens: exact,
    select(input) {
      if (routing.overrides.workerHeader) {
        const id = headerValue(input.headers, WORKER_HEADER);
        if (id !== undefined)
          return selection(
            pinnedStrategy(pinnedWorker(id, input.headers, d.adminToken!, input.model, d.workerById)),
            'override:worker',
          );
      }
      if (routing.overrides.strategyHeader) {
        const name = headerValue(input.headers, STRATEGY_HEADER);
        if (name !== undefined) return forcedSelection(name);
      }
      for (const r of rules) {
        if (!r.matches(input)) continue;
        if (r.selection) return r.selection;
        const e = r.experiment!;
        return armSelections.get(e.assign(e.keyOf(input), d.strategyDeps.random))!;
      }
      return fallback;
    },
    summary: () => ({ experiments: experiments.map((e) => e.summary()) }),
  };
}
