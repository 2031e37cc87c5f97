import { createWriteStream, type WriteStream } from 'node:fs';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { z } from 'zod';
import type { Fleet, LoadTicket } from './fleet.js';
import type { WorkerLoad } from '../routing/strategies/strategy.js';
import { DecisionOrder, NO_WAIT, type DecisionTurn } from './decision-order.js';
import { registerLoadSharingMetrics } from './load-sharing-metrics.js';

/**
 * Several gateway replicas agree on the KV index (each subscribes to every
 * worker's events) but each sees only its own in-flight requests. With
 * `loadSharing` set, every change to a replica's own load (a request routed,
 * its first token, its end) is published as a delta at once, batched per
 * event-loop tick, and applied by the others as it arrives: periodic snapshots
 * alone arrive after the next replica has already decided on a stale view
 * (bench/results/replicas.md). A full snapshot every `publishIntervalMs` is the
 * heartbeat: it resynchronises a replica that missed deltas, and a replica not
 * heard from within `staleAfterMs` no longer counts. A replica that joins (or
 * reconnects) asks the others for a snapshot, so it converges within one round
 * trip, at the latest by the next heartbeat.
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
    /** Full snapshot (heartbeat) interval. */
    publishIntervalMs: z.number().int().min(10).default(500),
    /** A replica not heard from for this long is gone (died, partitioned): its load no longer counts. */
    staleAfterMs: z.number().int().min(50).default(2000),
    /** Publish each load change as it happens; false = snapshots only (the pre-delta behaviour, kept for comparison). */
    deltas: z.boolean().default(true),
    /**
     * Take simultaneous decisions of different replicas one after another, in arrival order, each seeing the
     * previous ones' load (decision-order.ts): requests that arrive together at several replicas otherwise all
     * pick the same least-loaded worker. Costs two entries per request in messages already sent, and a wait only
     * while another replica holds an earlier, undecided request. Figures: bench/results/replicas.md.
     */
    orderDecisions: z.boolean().default(false),
    /** The longest a decision waits for other replicas' earlier ones. */
    orderMaxWaitMs: z.number().int().min(1).max(1000).default(25),
  })
  .refine((c) => c.staleAfterMs > 2 * c.publishIntervalMs, {
    message: 'staleAfterMs must exceed twice publishIntervalMs',
    path: ['staleAfterMs'],
  });
export type LoadSharingConfig = z.infer<typeof loadSharingConfigSchema>;

/** How messages travel; NATS core pub/sub in production (`natsTransport`), a fake in tests. */
export interface LoadTransport {
  publish(data: Uint8Array): void;
  /**
   * Delivers every message on the subject, this replica's own included, in each
   * sender's order. `onUp` runs on each (re)connection: what was sent meanwhile was lost.
   */
  subscribe(handler: (data: Uint8Array) => void, onUp?: () => void): void;
  close(): Promise<void>;
}

export interface LoadSharingCounts {
  deltaAgeCount: number;
  deltaAgeSumMs: number;
  deltaAgeMaxMs: number;
  snapshotsSent: number;
  snapshotsReceived: number;
  deltaBatchesSent: number;
  deltasSent: number;
  deltasReceived: number;
  order: DecisionOrder['counts'] | undefined;
}

/** Per worker: inflight, prefillRequests, prefillTokens, decodeRequests, decodeBlocks. */
type Counts = number[];
/**
 * On the wire (JSON), always `r` (replica id) and one of:
 * - snapshot `{ s, w: { workerId: Counts } }` (idle workers left out), `s` the sequence of the last delta batch in it;
 * - delta batch `{ s, d: [[workerId, ...Counts, requestId], ...] }`, `s` one more than the previous batch;
 * - snapshot request `{ q: 1 }`;
 * and, with `orderDecisions`, `p` and/or `c` (on a delta batch or alone).
 * Ages are taken from the receiver's clock, never the sender's.
 */
interface Message {
  r: string;
  s?: number;
  w?: Record<string, Counts>;
  d?: unknown[][];
  q?: number;
  /** Decision order (decision-order.ts): requests announced on arrival `[[slot, arrivedAt], ...]`, and decided `[slot, ...]`. */
  p?: unknown[];
  c?: unknown[];
  /** Sender's wall clock (ms) on delta batches: their age on receipt is measured, never trusted for anything else. */
  t?: number;
}
interface Peer {
  at: number;
  /** False until its first snapshot: deltas on an unknown base would be wrong, so they wait for one. */
  synced: boolean;
  seq: number;
  loads: Map<string, Counts>;
  askedAt: number;
}

export interface LoadSharingDeps {
  fleet: Fleet;
  transport: LoadTransport;
  config: LoadSharingConfig;
  log: Logger;
  replicaId: string;
  now?: () => number;
  registry?: Registry;
  /** Bench-only: a JSON line per local load change with this replica's own and combined view (decision analysis). */
  tracePath?: string | undefined;
}

export class LoadSharing {
  readonly replicaId: string;
  readonly #d: LoadSharingDeps;
  readonly #now: () => number;
  readonly #peers = new Map<string, Peer>();
  #timer: NodeJS.Timeout | undefined;
  #pending: unknown[][] = [];
  #snapshotDue = false;
  #flushScheduled = false;
  #seq = 0;
  readonly #count = {
    snapshotsSent: 0,
    snapshotsReceived: 0,
    deltaBatchesSent: 0,
    deltasSent: 0,
    deltasReceived: 0,
    /** Age of delta batches on receipt (the sender's wall clock: meaningful on one host or with synced clocks). */
    deltaAgeCount: 0,
    deltaAgeSumMs: 0,
    deltaAgeMaxMs: 0,
  };
  readonly #encoder = new TextEncoder();
  readonly #decoder = new TextDecoder();
  readonly #trace: WriteStream | undefined;
  readonly #order: DecisionOrder | undefined;

  constructor(deps: LoadSharingDeps) {
    this.#d = deps;
    this.replicaId = deps.replicaId;
    this.#now = deps.now ?? Date.now;
    if (deps.config.orderDecisions)
      this.#order = new DecisionOrder({
        replicaId: deps.replicaId,
        maxWaitMs: deps.config.orderMaxWaitMs,
        now: this.#now,
        schedule: () => this.#schedule(false),
      });
    if (deps.registry) registerLoadSharingMetrics(deps.registry, this);
    if (deps.tracePath) this.#trace = createWriteStream(deps.tracePath, { flags: 'a' });
  }

  /** Message counts, and the decision order's waits (undefined without `orderDecisions`), for the metrics. */
  get counts(): Readonly<LoadSharingCounts> {
    return { ...this.#count, order: this.#order?.counts };
  }

  /** Replicas heard from within `staleAfterMs`. */
  get peers(): number {
    return this.#peers.size;
  }

  /**
   * Call when a request arrives; `wait()` before its routing decision, `done()` once the load it adds is counted.
   * A no-op turn without `orderDecisions` or peers.
   */
  decisionTurn(arrivedAt: number): DecisionTurn {
    return this.#order?.turn(arrivedAt, this.#peers.size) ?? NO_WAIT;
  }

  start(): void {
    this.#d.fleet.onLocalLoad = (t, delta) => this.#local(t, delta);
    this.#d.transport.subscribe(
      (data) => this.receive(data),
      () => this.#joined(),
    );
    this.#timer = setInterval(() => this.tick(), this.#d.config.publishIntervalMs);
    this.#timer.unref();
  }

  /** One heartbeat: publish our full load, drop replicas gone quiet. */
  tick(): void {
    this.publish();
    this.expire();
  }

  /** Publishes pending deltas, then a full snapshot of this replica's load. */
  publish(): void {
    this.#snapshotDue = false;
    this.flush();
    const w: Record<string, Counts> = {};
    for (const [id, l] of this.#d.fleet.localLoads()) {
      if (l.inflightRequests !== 0)
        w[id] = [l.inflightRequests, l.prefillRequests, l.prefillTokens, l.decodeRequests, l.decodeBlocks];
    }
    this.#send({ r: this.replicaId, s: this.#seq, w });
    this.#count.snapshotsSent++;
  }

  /** Sends what this tick gathered: one delta batch, and a snapshot if a peer asked for one. */
  flush(): void {
    this.#flushScheduled = false;
    const order = this.#order?.takeOutgoing() ?? {};
    if (this.#pending.length > 0 || order.p || order.c) {
      const m: Message = { r: this.replicaId, ...order };
      if (this.#pending.length > 0) {
        m.t = Date.now();
        m.s = ++this.#seq;
        m.d = this.#pending;
        this.#pending = [];
        this.#count.deltaBatchesSent++;
        this.#count.deltasSent += m.d.length;
      }
      this.#send(m);
    }
    if (this.#snapshotDue) this.publish();
  }

  /** Asks every other replica for a snapshot (on joining and on reconnecting). */
  requestSnapshots(): void {
    this.#send({ r: this.replicaId, q: 1 });
  }

  receive(data: Uint8Array): void {
    let m: Message;
    try {
      m = JSON.parse(this.#decoder.decode(data)) as Message;
      if (typeof m?.r !== 'string') throw new Error('no replica id');
    } catch (err) {
      this.#d.log.debug({ error: (err as Error).message }, 'load sharing: ignored a malformed message');
      return;
    }
    if (m.r === this.replicaId) return;
    const now = this.#now();
    if (Array.isArray(m.d) && typeof m.t === 'number' && Number.isFinite(m.t)) {
      const age = Math.max(0, Date.now() - m.t);
      this.#count.deltaAgeCount++;
      this.#count.deltaAgeSumMs += age;
      this.#count.deltaAgeMaxMs = Math.max(this.#count.deltaAgeMaxMs, age);
    }
    let peer = this.#peers.get(m.r);
    if (!peer) {
      this.#d.log.info({ replica: m.r }, 'load sharing: replica joined');
      this.#peers.set(m.r, (peer = { at: now, synced: false, seq: 0, loads: new Map(), askedAt: -Infinity }));
    }
    peer.at = now;
    if (m.q === 1) return this.#schedule(true);
    if (typeof m.w === 'object' && m.w !== null) return this.#snapshot(peer, m.w, num(m.s));
    // Load first: a decision's end travels with the load it added, and must not release a wait before it counts.
    // Announcements before ends: a request decided in the tick it arrived sends both in one message.
    if (Array.isArray(m.d)) this.#deltas(peer, m.d, num(m.s));
    if (Array.isArray(m.p)) this.#order?.announced(m.r, m.p);
    if (Array.isArray(m.c)) this.#order?.ended(m.r, m.c);
  }

  /** Forgets replicas not heard from within `staleAfterMs`; their load stops counting. */
  expire(): void {
    const cutoff = this.#now() - this.#d.config.staleAfterMs;
    for (const [id, p] of this.#peers) {
      if (p.at >= cutoff) continue;
      this.#peers.delete(id);
      this.#d.log.info({ replica: id }, 'load sharing: replica gone quiet, its load no longer counts');
      this.#order?.forget(id);
      for (const w of p.loads.keys()) this.#sum(w);
    }
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.#order?.close();
    const fleet = this.#d.fleet;
    fleet.onLocalLoad = undefined;
    const touched = new Set<string>();
    for (const p of this.#peers.values()) for (const w of p.loads.keys()) touched.add(w);
    this.#peers.clear();
    for (const w of touched) fleet.setRemoteLoad(w, undefined);
    await this.#d.transport.close();
    await new Promise<void>((r) => (this.#trace ? this.#trace.end(r) : r()));
  }

  #joined(): void {
    this.requestSnapshots();
    this.#schedule(true);
  }

  #local(t: LoadTicket, delta: readonly number[]): void {
    if (this.#trace) this.#traceLine(t, delta);
    if (!this.#d.config.deltas) return;
    this.#pending.push([t.worker.id, ...delta, t.id]);
    this.#schedule(false);
  }

  #schedule(snapshot: boolean): void {
    if (snapshot) this.#snapshotDue = true;
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    setImmediate(() => this.flush());
  }

  #snapshot(peer: Peer, w: Record<string, unknown>, seq: number): void {
    this.#count.snapshotsReceived++;
    const old = peer.loads;
    peer.loads = new Map();
    for (const [id, v] of Object.entries(w))
      if (Array.isArray(v))
        peer.loads.set(
          id,
          [0, 1, 2, 3, 4].map((i) => num(v[i])),
        );
    peer.synced = true;
    peer.seq = seq;
    for (const id of old.keys()) if (!peer.loads.has(id)) this.#sum(id);
    for (const id of peer.loads.keys()) this.#sum(id);
  }

  #deltas(peer: Peer, d: unknown[][], seq: number): void {
    this.#count.deltasReceived += d.length;
    if (!peer.synced || seq !== peer.seq + 1) {
      // Joined mid-stream, or a batch was lost: ask for a snapshot (once per heartbeat) and skip until it comes.
      if (peer.synced)
        this.#d.log.debug({ replica: this.replicaId, seq, expected: peer.seq + 1 }, 'load sharing: delta gap');
      peer.synced = false;
      const now = this.#now();
      if (now - peer.askedAt >= this.#d.config.publishIntervalMs) {
        peer.askedAt = now;
        this.requestSnapshots();
      }
      return;
    }
    peer.seq = seq;
    const touched = new Set<string>();
    for (const e of d) {
      if (!Array.isArray(e) || typeof e[0] !== 'string') continue;
      let c = peer.loads.get(e[0]);
      if (!c) peer.loads.set(e[0], (c = [0, 0, 0, 0, 0]));
      for (let i = 0; i < 5; i++) c[i]! += finite(e[i + 1]);
      if (c[0]! <= 0) peer.loads.delete(e[0]);
      touched.add(e[0]);
    }
    for (const id of touched) this.#sum(id);
  }

  /** Sums the synced peers' load on one worker and hands it to the fleet. */
  #sum(id: string): void {
    let sum: WorkerLoad | undefined;
    for (const p of this.#peers.values()) {
      const c = p.loads.get(id);
      if (!c) continue;
      sum ??= { inflightRequests: 0, prefillRequests: 0, prefillTokens: 0, decodeRequests: 0, decodeBlocks: 0 };
      sum.inflightRequests += Math.max(0, c[0]!);
      sum.prefillRequests += Math.max(0, c[1]!);
      sum.prefillTokens += Math.max(0, c[2]!);
      sum.decodeRequests += Math.max(0, c[3]!);
      sum.decodeBlocks += Math.max(0, c[4]!);
    }
    this.#d.fleet.setRemoteLoad(id, sum);
  }

  #send(m: Message): void {
    this.#d.transport.publish(this.#encoder.encode(JSON.stringify(m)));
  }

  #traceLine(t: LoadTicket, delta: readonly number[]): void {
    const view = (l: WorkerLoad) => [l.inflightRequests, l.prefillTokens, l.decodeBlocks];
    const ws = this.#d.fleet.workers;
    this.#trace!.write(
      `${JSON.stringify({
        t: Date.now(),
        r: this.replicaId,
        id: t.id,
        w: t.worker.id,
        d: delta,
        tok: t.promptTokens,
        local: ws.map((w) => view(w.localLoad)),
        seen: ws.map((w) => view(w.load)),
        ...(this.#order ? { waits: [this.#order.counts.waited, this.#order.counts.timedOut] } : {}),
        age: [this.#count.deltaAgeCount, this.#count.deltaAgeSumMs, this.#count.deltaAgeMaxMs],
      })}\n`,
    );
  }
}

/** Counts from another process are only trusted to be finite, non-negative numbers. */
function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : 0;
}
/** Deltas may be negative, but finite. */
function finite(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0;
}
