import type { Logger } from 'pino';
import { z } from 'zod';
import { DnsDiscovery, dnsDiscoveryConfigSchema, type DnsResolver } from './dns.js';
import type { KubeEnvironment } from './kube-api.js';
import { KubernetesDiscovery, kubernetesDiscoveryConfigSchema } from './kubernetes.js';
import { StaticDiscovery, staticDiscoveryConfigSchema, type StaticWorker } from './static.js';
export { diffWorkers, type WorkerDiff } from './changes.js';

/**
 * One worker as a discovery source sees it. The shape is that of a
 * `fleet.workers[]` entry (`gateway/fleet/fleet.ts`), so the fleet can build a
 * `Worker` from it with the same schema it uses for the static list.
 */
export interface DiscoveredWorker {
  id: string;
  url: string;
  models: string[];
  role: 'both' | 'prefill' | 'decode';
  labels: Record<string, string>;
  kvEvents?: { endpoint: string; replayEndpoint?: string; topic?: string };
}

/**
 * A source of the fleet's membership. `onChange` receives the WHOLE current
 * list (not a delta) and is called only when it differs from the last one;
 * `diffWorkers` turns two lists into what to add, drain and replace.
 */
export interface Discovery {
  readonly name: string;
  /** Resolves after the first lookup (its result emitted if it succeeded); later changes arrive through `onChange`. */
  start(onChange: (workers: DiscoveredWorker[]) => void): Promise<void>;
  /** Stops timers and watches; no `onChange` call follows. */
  stop(): Promise<void>;
}

/**
 * `fleet.discovery` (proposed key): where the workers come from. `static` is
 * the `fleet.workers` list; `dns` and `kubernetes` find them at runtime.
 */
export const discoveryConfigSchema = z.discriminatedUnion('type', [
  staticDiscoveryConfigSchema,
  dnsDiscoveryConfigSchema,
  kubernetesDiscoveryConfigSchema,
]);
export type DiscoveryConfig = z.infer<typeof discoveryConfigSchema>;

export interface DiscoveryDeps {
  /** `fleet.workers`, for `static`. */
  staticWorkers?: readonly StaticWorker[] | undefined;
  log?: Logger | undefined;
  /** Tests: a stub resolver for `dns`. */
  resolver?: DnsResolver | undefined;
  /** Tests: in-cluster paths and environment for `kubernetes`. */
  kubeEnv?: KubeEnvironment | undefined;
  random?: (() => number) | undefined;
}

export function createDiscovery(config: DiscoveryConfig, deps: DiscoveryDeps = {}): Discovery {
  switch (config.type) {
    case 'static':
      return new StaticDiscovery(deps.staticWorkers ?? []);
    case 'dns':
      return new DnsDiscovery(config, { resolver: deps.resolver, log: deps.log });
    case 'kubernetes':
      return new KubernetesDiscovery(config, { env: deps.kubeEnv, log: deps.log, random: deps.random });
  }
}
