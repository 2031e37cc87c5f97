import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import { z } from 'zod';
import type { Fleet } from './fleet.js';
import type { WorkerLoad } from '../routing/strategies/strategy.js';

/**
 * Several gateway replicas agree on the KV index (each subscribes to every
 * worker's events) but each sees only its own in-flight requests, which costs
 * TTFT once the fleet queues (bench/results/replicas.md). With `loadSharing` set,
 * every replica publishes its own per-worker load every `publishIntervalMs` and
 * adds the other replicas' latest snapshots to what its strategies read.
 */
export const loadSharingConfigSchema = z
  .strictObject({
    nats: z.strictObject({
      /** NATS server URLs, e.g. `nats://nats.kvgate.svc:4222`; the client reconnects by itself. */
      servers: z.array(z.string().min(1)).min(1),
    }),
    /** Every replica of one gateway publishes and subscribes here; replicas of different fleets need different subjects. */
    subject: z
      .string()
      .regex(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/, 'a NATS subject such as kvgate.load (no wildcards)')
      .default('kvgate.load'),
    publishIntervalMs: z.number().int().min(10).default(100),
    /** A replica not heard from for this long is gone (died, partitioned): its load no longer counts. */
    staleAfterMs: z.number().int().min(50).default(2000),
  })
  .refine((c) => c.staleAfterMs > 2 * c.publishIntervalMs, {
    message: 'staleAfterMs must exceed twice publishIntervalMs',
    path: ['staleAfterMs'],
  });
export type LoadSharingConfig = z.infer<typeof loadSharingConfigSchema>;

/** How snapshots travel; NATS in production (`natsTransport`), a fake in tests. */
export interface LoadTransport {
  publish(data: Uint8Array): void;
  /** Delivers every snapshot on the subject, this replica's own included. */
  subscribe(handler: (data: Uint8Array) => void): void;
  close(): Promise<void>;
}

/**
 * On the wire (JSON): `{ r: replica id, w: { workerId: [inflight, prefillRequests,
 * prefillTokens, decodeRequests, decodeBlocks] } }`. Idle workers are left out
 * (absent = zero). Ages are taken from the receiver's clock, never the sender's.
 */
interface Snapshot {
  r: string;
  w: Record<string, number[]>;
}
interface Peer {
  at: number;
  loads: Record<string, number[]>;
}

export interface LoadSharingDeps {
  fleet: Fleet;
  transport: LoadTransport;
  config: LoadSharingConfig;
  log: Logger;
  replicaId: string;
  now?: () => number;
  registry?: Registry;
}

export class LoadSharing {
  readonly replicaId: string;
  readonly #d: LoadSharingDeps;
  readonly #now: () => number;
  readonly #peers = new Map<string, Peer>();
  /** Worker ids given a remote share last time, so a share that fell to zero is cleared. */
  #withRemote = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #sent = 0;
  #received = 0;
  readonly #encoder = new TextEncoder();
  readonly #decoder = new TextDecoder();

  constructor(deps: LoadSharingDeps) {
    this.#d = deps;
    this.replicaId = deps.replicaId;
    this.#now = deps.now ?? Date.now;
    if (deps.registry) this.#registerMetrics(deps.registry);
  }

  /** Replicas heard from within `staleAfterMs`. */
  get peers(): number {
    return this.#peers.size;
  }

  start(): void {
    this.#d.transport.subscribe((data) => this.receive(data));
    this.#timer = setInterval(() => this.tick(), this.#d.config.publishIntervalMs);
    this.#timer.unref();
  }

  /** One interval: publish our own load, drop replicas gone quiet. */
  tick(): void {
    this.publish();
    this.expire();
  }

  publish(): void {
    const w: Record<string, number[]> = {};
    for (const [id, l] of this.#d.fleet.localLoads()) {
      if (l.inflightRequests !== 0)
        w[id] = [l.inflightRequests, l.prefillRequests, l.prefillTokens, l.decodeRequests, l.decodeBlocks];
    }
    this.#d.transport.publish(this.#encoder.encode(JSON.stringify({ r: this.replicaId, w } satisfies Snapshot)));
    this.#sent++;
  }

  receive(data: Uint8Array): void {
    let s: Snapshot;
    try {
      s = JSON.parse(this.#decoder.decode(data)) as Snapshot;
      if (typeof s?.r !== 'string' || typeof s.w !== 'object' || s.w === null) throw new Error('not a load snapshot');
    } catch (err) {
      this.#d.log.debug({ error: (err as Error).message }, 'load sharing: ignored a malformed snapshot');
      return;
    }
    if (s.r === this.replicaId) return;
    if (!this.#peers.has(s.r)) this.#d.log.info({ replica: s.r }, 'load sharing: replica joined');
    this.#peers.set(s.r, { at: this.#now(), loads: s.w });
    this.#received++;
    this.#apply();
  }

  /** Forgets replicas not heard from within `staleAfterMs`; their load stops counting. */
  expire(): void {
    const cutoff = this.#now() - this.#d.config.staleAfterMs;
    let changed = false;
    for (const [id, p] of this.#peers) {
      if (p.at >= cutoff) continue;
      this.#peers.delete(id);
      changed = true;
      this.#d.log.info({ replica: id }, 'load sharing: replica gone quiet, its load no longer counts');
    }
    if (changed) this.#apply();
  }

  /** Sums the fresh peers' snapshots per worker and hands each worker its share. */
  #apply(): void {
    const sums = new Map<string, WorkerLoad>();
    for (const p of this.#peers.values()) {
      for (const [id, v] of Object.entries(p.loads)) {
        if (!Array.isArray(v)) continue;
        let sum = sums.get(id);
        if (!sum)
          sums.set(
            id,
            (sum = { inflightRequests: 0, prefillRequests: 0, prefillTokens: 0, decodeRequests: 0, decodeBlocks: 0 }),
          );
        sum.inflightRequests += num(v[0]);
        sum.prefillRequests += num(v[1]);
        sum.prefillTokens += num(v[2]);
        sum.decodeRequests += num(v[3]);
        sum.decodeBlocks += num(v[4]);
      }
    }
    const fleet = this.#d.fleet;
    for (const id of this.#withRemote) if (!sums.has(id)) fleet.setRemoteLoad(id, undefined);
    for (const [id, sum] of sums) fleet.setRemoteLoad(id, sum);
    this.#withRemote = new Set(sums.keys());
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    for (const id of this.#withRemote) this.#d.fleet.setRemoteLoad(id, undefined);
    this.#peers.clear();
    this.#withRemote.clear();
    await this.#d.transport.close();
  }

  #registerMetrics(registry: Registry): void {
    const self = this;
    new Gauge({
      name: 'kvgate_load_sharing_peers',
      help: 'Other gateway replicas whose in-flight load snapshots are fresh',
      registers: [registry],
      collect() {
        this.set(self.peers);
      },
    });
    new Counter({
      name: 'kvgate_load_sharing_snapshots_total',
      help: 'Load snapshots published by this replica (sent) and taken from other replicas (received)',
      labelNames: ['direction'],
      registers: [registry],
      collect() {
        this.reset();
        this.inc({ direction: 'sent' }, self.#sent);
        this.inc({ direction: 'received' }, self.#received);
      },
    });
  }
}

/** Counts from another process are only trusted to be finite, non-negative numbers. */
function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : 0;
}

/**
 * Snapshots over NATS core pub/sub. A server that cannot be reached is logged
 * once, and routing carries on with local load only (other replicas' snapshots
 * expire); we retry the first connection ourselves, the client reconnects later ones.
 */
export function natsTransport(config: LoadSharingConfig, log: Logger, name: string): LoadTransport {
  let nc: import('nats').NatsConnection | undefined;
  let handler: ((data: Uint8Array) => void) | undefined;
  let closed = false;
  let up = false;
  let wake: (() => void) | undefined;
  const down = (reason: string) => {
    if (!up) return;
    up = false;
    log.warn(
      { servers: config.nats.servers, reason },
      "load sharing: NATS unreachable, routing on this replica's own load until it is back",
    );
  };
  const ready = (async () => {
    const { connect, Events } = await import('nats');
    let warned = false;
    while (!closed) {
      try {
        nc = await connect({ servers: config.nats.servers, name, maxReconnectAttempts: -1, reconnectTimeWait: 1000 });
        break;
      } catch (err) {
        if (!warned)
          log.warn(
            { servers: config.nats.servers, error: (err as Error).message },
            "load sharing: NATS unreachable, routing on this replica's own load; retrying",
          );
        warned = true;
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 1000).unref();
        });
      }
    }
    if (!nc) return;
    if (closed) return void (await nc.close().catch(() => {}));
    up = true;
    log.info({ server: nc.getServer(), subject: config.subject }, 'load sharing: connected to NATS');
    nc.subscribe(config.subject, {
      callback: (err, msg) => {
        if (!err) handler?.(msg.data);
      },
    });
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === Events.Disconnect) down(String(s.data));
        else if (s.type === Events.Reconnect && !up) {
          up = true;
          log.info({ server: String(s.data) }, 'load sharing: reconnected to NATS');
        }
      }
    })().catch(() => {});
  })().catch((err: unknown) => log.error({ error: (err as Error).message }, 'load sharing: NATS client failed'));
  return {
    publish(data) {
      // While disconnected the client would buffer and replay stale snapshots; better to send none.
      if (up && nc && !nc.isClosed()) nc.publish(config.subject, data);
    },
    subscribe(h) {
      handler = h;
    },
    async close() {
      closed = true;
      wake?.();
      await ready;
      if (nc && !nc.isClosed()) await nc.drain().catch(() => nc?.close());
    },
  };
}
