import type { AdapterRouting } from '../fleet/adapters.js';
import type { DecisionTurn } from '../fleet/decision-order.js';
import type { IncomingHttpHeaders } from 'node:http';
import type { Logger } from 'pino';
import type { GatewayConfig } from '../../config/schema.js';
import { GatewayError } from '../front/errors.js';
import type { Fleet, LoadTicket, Worker } from '../fleet/fleet.js';
import type { GatewayMetrics } from '../ops/metrics.js';
import { RoutingPipeline, type CandidateSplit, type PromptBlocksProvider, type Routed } from './pipeline.js';
import { PoolError, resolvePools } from './policies/pools.js';
import { createRoutingPolicy, type Policy } from './policy.js';
import type { InferenceRequest } from '../front/request.js';
import type { RoutingConfig } from './routing-config.js';
import { createStrategy } from './strategies/registry.js';
import type { PrefixMatcher, StrategyDeps, WorkerView } from './strategies/strategy.js';

/** What every routing build shares: the parts that outlive a reload. */
export interface RoutingDeps {
  readonly fleet: Fleet;
  readonly metrics: GatewayMetrics;
  readonly log: Logger;
  /** The events-fed KV index, for the strategies that read one. */
  readonly index: PrefixMatcher | undefined;
  readonly promptBlocks: PromptBlocksProvider | undefined;
  readonly random: () => number;
  readonly now: () => number;
  readonly blockSize: number;
  readonly adminToken: string | undefined;
  /** P/D disaggregation's narrowing of split pools (gateway/disagg/split.ts). */
  readonly split?: CandidateSplit | undefined;
  readonly adapters?: AdapterRouting | undefined;
  /** Gateway replicas taking their decisions in arrival order (load sharing's `orderDecisions`). */
  readonly decisionTurn?: ((arrivedAt: number) => DecisionTurn) | undefined;
}

/** A worker as pools see it: id and labels are all `resolvePools` reads. */
export type PoolMember = Pick<WorkerView, 'id' | 'labels'>;

/**
 * The routing pipeline the front and admin servers hold. Every request goes
 * to the pipeline current when it arrives; `swap` replaces it for the next
 * ones, so a reload never touches a request already routed (its worker,
 * ticket and strategy stay its own). A subclass rather than a wrapper type,
 * so the servers keep their `RoutingPipeline` dependency unchanged.
 */
export class LivePipeline extends RoutingPipeline {
  #current: RoutingPipeline;
  #strategy: string;

  constructor(initial: RoutingPipeline, deps: RoutingDeps, strategy: string) {
    super({
      fleet: deps.fleet,
      policy: PENDING,
      metrics: deps.metrics,
      log: deps.log,
      sessionHeader: 'x-session-id',
      random: deps.random,
      now: deps.now,
    });
    this.#current = initial;
    this.#strategy = strategy;
  }

  /** The default strategy's name of the current routing. */
  get strategyName(): string {
    return this.#strategy;
  }

  swap(next: RoutingPipeline, strategy: string): void {
    this.#current = next;
    this.#strategy = strategy;
  }

  override route(
    request: InferenceRequest,
    path: string,
    headers: IncomingHttpHeaders,
    requestId: string,
    clientAddress?: string,
    eligible?: (worker: Worker) => boolean,
  ): Routed | Promise<Routed> {
    return this.#current.route(request, path, headers, requestId, clientAddress, eligible);
  }

  override shadow(routed: Routed, ticket: LoadTicket): void {
    this.#current.shadow(routed, ticket);
  }

  override summary(): Record<string, unknown> {
    return this.#current.summary();
  }
}

/** Until routing can be built (a label pool with no worker yet, under discovery), requests get a 503. */
const PENDING: Policy = {
  name: 'pending',
  select() {
    throw new GatewayError(
      503,
      'routing is not ready: a routing pool has no worker yet',
      'service_unavailable',
      'no_healthy_worker',
      null,
      true,
    );
  },
};

/**
 * Builds a whole routing (default strategy, policies, experiments, shadows) for
 * `config` over `members`, the fleet the routing will see (for a reload: the
 * fleet as it will be once the new config's workers are applied). Throws on a
 * bad routing (`RoutingSetupError`, `StrategyConfigError`) without side effects.
 * With `lenientPools` (discovery: pools may fill later) an unresolvable pool
 * yields a pipeline that answers 503 until the fleet changes.
 */
export function buildRouting(
  config: GatewayConfig,
  deps: RoutingDeps,
  members: readonly PoolMember[],
  lenientPools = false,
): { pipeline: RoutingPipeline; strategy: string; pending: boolean } {
  const routing = config.routing;
  const pipelineOf = (policy: Policy) =>
    new RoutingPipeline({
      fleet: deps.fleet,
      policy,
      metrics: deps.metrics,
      log: deps.log,
      sessionHeader: routing.sessionHeader,
      honourSession: routing.overrides.session,
      promptBlocks: deps.promptBlocks,
      split: deps.split,
      adapters: deps.adapters,
      random: deps.random,
      now: deps.now,
      decisionTurn: deps.decisionTurn,
    });
  if (lenientPools) {
    try {
      resolvePools(routing.pools, members);
    } catch (err) {
      if (!(err instanceof PoolError)) throw err;
      deps.log.warn(
        { pool: err.path.join('.'), error: err.message },
        'routing pool has no worker yet; routing waits for discovery',
      );
      return { pipeline: pipelineOf(PENDING), strategy: routing.strategy, pending: true };
    }
  }
  const strategyDeps: StrategyDeps = {
    random: deps.random,
    now: deps.now,
    log: deps.log,
    workers: members as readonly WorkerView[],
    blockSize: deps.blockSize,
    index: deps.index,
  };
  const strategy = createStrategy(routing.strategy, routing.params, strategyDeps);
  const policy = createRoutingPolicy({
    routing,
    strategyDeps,
    workerById: (id) => deps.fleet.get(id),
    adminToken: deps.adminToken,
    defaultStrategy: strategy,
  });
  return { pipeline: pipelineOf(policy), strategy: strategy.name, pending: false };
}

/**
 * Which pools hold which workers: routing resolves pools once, so when this
 * changes with the fleet (a discovered worker carries a pool's labels) the
 * routing is rebuilt. Empty when no pool is configured: then no fleet change
 * ever rebuilds the routing, and strategies keep their state.
 */
export function poolSignature(routing: RoutingConfig, members: readonly PoolMember[]): string {
  const names = Object.keys(routing.pools);
  if (names.length === 0) return '';
  return JSON.stringify(
    names.map((name) => {
      const p = routing.pools[name]!;
      const ids = p.workers
        ? p.workers.filter((id) => members.some((m) => m.id === id))
        : members.filter((m) => Object.entries(p.labels!).every(([k, v]) => m.labels[k] === v)).map((m) => m.id);
      return [name, ids.sort()];
    }),
  );
}

/** Config sections a running gateway cannot take over: a change there is logged as needing a restart. */
const RESTART_KEYS: readonly (readonly string[])[] = [
  ['server'],
  ['admin'],
  ['upstream'],
  ['models'],
  ['disaggregation'],
  ['loadSharing'],
  ['lora'],
  ['flow'],
  ['fleet', 'health'],
  ['fleet', 'discovery'],
];

/** The keys among `RESTART_KEYS` whose values differ between the two configs, as `fleet.health` style paths. */
export function restartOnlyChanges(before: GatewayConfig, after: GatewayConfig): string[] {
  const at = (c: unknown, path: readonly string[]) =>
    path.reduce<unknown>((v, k) => (v as Record<string, unknown> | undefined)?.[k], c);
  return RESTART_KEYS.filter((path) => JSON.stringify(at(before, path)) !== JSON.stringify(at(after, path))).map((p) =>
    p.join('.'),
  );
}
