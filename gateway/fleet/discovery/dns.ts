import { Resolver } from 'node:dns/promises';
import type { Logger } from 'pino';
import { z } from 'zod';
import { ChangeEmitter } from './changes.js';
import type { DiscoveredWorker, Discovery } from './discovery.js';
import { hostPort, kvEventsAt, workerId, workerTemplateSchema } from './template.js';

export const dnsDiscoveryConfigSchema = z.strictObject({
  type: z.literal('dns'),
  /** A name with one A/AAAA record per worker: a headless Service, e.g. `vllm.inference.svc.cluster.local`. */
  name: z.string().min(1),
  /** The engines' HTTP port (DNS A/AAAA records carry none). */
  port: z.number().int().min(1).max(65535),
  family: z.enum(['ipv4', 'ipv6', 'any']).default('any'),
  intervalMs: z.number().int().min(100).default(5000),
  /** Worker ids are `<idPrefix>-<address>`; default: the name's first label (`vllm-10.0.0.7`). */
  idPrefix: z.string().optional(),
  ...workerTemplateSchema,
});
export type DnsDiscoveryConfig = z.infer<typeof dnsDiscoveryConfigSchema>;

/** The two calls DNS discovery makes; `node:dns/promises`' `Resolver` has them, tests pass a stub. */
export interface DnsResolver {
  resolve4(name: string): Promise<string[]>;
  resolve6(name: string): Promise<string[]>;
}

/** "The name has no records (of this family)": an empty fleet, not a failed lookup. */
const NO_RECORDS = new Set(['ENOTFOUND', 'ENODATA', 'NOTFOUND', 'NODATA']);

/**
 * Resolves a name on an interval; each address is a worker. A lookup that
 * fails (timeout, SERVFAIL) keeps the last known fleet, because dropping every
 * worker on one bad DNS answer would take the whole gateway down; a name that
 * resolves to nothing (NXDOMAIN, no data: a headless Service without ready
 * Pods) really is an empty fleet.
 */
export class DnsDiscovery implements Discovery {
  readonly name = 'dns';
  readonly #config: DnsDiscoveryConfig;
  readonly #resolver: DnsResolver;
  readonly #log: Logger | undefined;
  readonly #emitter: ChangeEmitter;
  #timer: NodeJS.Timeout | undefined;
  #stopped = true;
  #failing = false;

  constructor(config: DnsDiscoveryConfig, deps: { resolver?: DnsResolver | undefined; log?: Logger | undefined } = {}) {
    this.#config = config;
    // Our own Resolver queries the DNS servers directly (A/AAAA), where `lookup` would go through getaddrinfo and /etc/hosts.
    this.#resolver = deps.resolver ?? new Resolver();
    this.#log = deps.log;
    this.#emitter = new ChangeEmitter(deps.log, 'dns');
  }

  async start(onChange: (workers: DiscoveredWorker[]) => void): Promise<void> {
    this.#stopped = false;
    this.#emitter.attach(onChange);
    await this.#poll();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#emitter.detach();
    clearTimeout(this.#timer);
  }

  /** One lookup, then the next one scheduled after it (never two in flight). */
  async #poll(): Promise<void> {
    try {
      const addresses = await this.#resolve();
      if (this.#failing) this.#log?.info({ name: this.#config.name }, 'dns discovery recovered');
      this.#failing = false;
      if (!this.#stopped) this.#emitter.emit(addresses.map((a) => this.#worker(a)));
    } catch (err) {
      if (!this.#failing)
        this.#log?.warn(
          { name: this.#config.name, err: (err as Error).message },
          'dns discovery lookup failed; keeping the last known workers',
        );
      this.#failing = true;
    }
    if (!this.#stopped) this.#timer = setTimeout(() => void this.#poll(), this.#config.intervalMs);
  }

  async #resolve(): Promise<string[]> {
    const { name, family } = this.#config;
    const lookups: Promise<string[]>[] = [];
    if (family !== 'ipv6') lookups.push(this.#resolver.resolve4(name));
    if (family !== 'ipv4') lookups.push(this.#resolver.resolve6(name));
    const results = await Promise.allSettled(lookups);
    const addresses: string[] = [];
    let failure: Error | undefined;
    for (const r of results) {
      if (r.status === 'fulfilled') addresses.push(...r.value);
      else if (!NO_RECORDS.has((r.reason as NodeJS.ErrnoException)?.code ?? '')) failure = r.reason as Error;
    }
    // One family failing outright while the other answered is still a failure: its workers would vanish.
    if (failure !== undefined) throw failure;
    return [...new Set(addresses)].sort();
  }

  #worker(address: string): DiscoveredWorker {
    const c = this.#config;
    const prefix = c.idPrefix ?? c.name.split('.')[0]!;
    const w: DiscoveredWorker = {
      id: workerId(prefix, address),
      url: `${c.scheme}://${hostPort(address, c.port)}`,
      models: [...c.models],
      role: c.role,
      labels: { ...c.labels },
    };
    const kv = c.kvEvents === undefined ? undefined : kvEventsAt(address, c.kvEvents);
    if (kv !== undefined) w.kvEvents = kv;
    return w;
  }
}
