import type { IncomingHttpHeaders } from 'node:http';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { Routed } from '../routing/pipeline.js';
import type { WorkerView } from '../routing/strategies/strategy.js';
import type { ResponseObserver } from '../proxy/usage-sniffer.js';
import type { ClientAnswer } from './answer.js';
import { Classifier, type FlowIdentity } from './classify.js';
import type { FlowConfig } from './config.js';
import { FlowMetrics, type ShedReason } from './metrics.js';
import { FlowObserver } from './observe.js';
import { ownBlocks, place, predictions, type Placement } from './place.js';
import { TtftModel } from './predict.js';
import { FlowQueue, type QueueItem } from './queue.js';
import { FlowStats } from './stats.js';
import { TenantShares } from './tenant-share.js';

/** A request flow control let through: where it goes, and the observer that reports its latencies back. */
export interface FlowPass {
  readonly routed: Routed;
  /**
   * What flow control did, for the `x-kvgate-flow` response header: the class, the wait in the
   * gateway, and a move off the strategy's saturated pick or a join of it
   * (`class=critical; wait_ms=1234; moved_from=w3; lost_blocks=1760; move=waited`).
   */
  readonly note: string;
  /**
   * `elsewhere` says (at the first byte) whether another worker than the placed one served
   * the request (the EPP's fallbacks): its TTFT then teaches nothing about the placed worker.
   */
  observe(inner: ResponseObserver, elsewhere?: () => boolean): ResponseObserver;
}

export interface FlowDeps {
  readonly config: FlowConfig;
  readonly registry: Registry;
  readonly log: Logger;
  readonly blockSize: number;
  /** Milliseconds; injected so tests control waiting and expiry. */
  readonly now?: () => number;
}

interface Held extends QueueItem {
  readonly id: FlowIdentity;
  readonly routed: Routed;
  readonly res: ClientAnswer;
  readonly requestId: string;
  readonly resolve: (pass: FlowPass | null) => void;
  timer: NodeJS.Timeout | undefined;
  placement?: Placement & { kind: 'go' };
  /** When a release first found room elsewhere while the strategy's pick was saturated (the affinity wait starts). */
  roomSince?: number;
}

/**
 * The flow control layer between routing and the proxy (`flow`): lets a request
 * through while one of its candidates has room, holds it in the gateway when all
 * are saturated, and releases held requests by class, tenant fairness and deadline
 * as room appears, to the worker the strategy picks at that moment. Sheds with 429
 * what cannot wait (full queues, TTL, unattainable TTFT targets).
 */
export class FlowControl {
  readonly #c: FlowConfig;
  readonly #log: Logger;
  readonly #blockSize: number;
  readonly #now: () => number;
  readonly #classify: Classifier;
  readonly model: TtftModel;
  readonly #queue: FlowQueue<Held>;
  readonly #metrics: FlowMetrics;
  readonly #stats: FlowStats;
  /** Recent use per tenant, with `tenants.fairness: fleet`. */
  readonly #shares: TenantShares | undefined;
  #seq = 0;
  #pumpScheduled = false;
  #poll: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(d: FlowDeps) {
    this.#c = d.config;
    this.#log = d.log;
    this.#blockSize = d.blockSize;
    this.#now = d.now ?? Date.now;
    this.#classify = new Classifier(d.config);
    this.model = new TtftModel(d.config);
    this.#queue = new FlowQueue(d.config.classes.length);
    this.#stats = new FlowStats(d.config);
    const shares = d.config.tenants.fairness === 'fleet' ? new TenantShares(d.config.tenants.fleetShare) : undefined;
    this.#shares = shares;
    this.#metrics = new FlowMetrics(
      d.registry,
      () => this.#c.classes.map((cls, rank) => [cls.name, this.#queue.sizeOf(rank)] as [string, number]),
      shares && (() => shares.snapshot(this.#now())),
    );
  }

  /**
   * Lets the request through (a pass, at once or after a wait) or answers it with 429
   * and resolves null. Throws a 400 for bad flow headers (unknown class, bad target).
   */
  gate(
    routed: Routed,
    headers: IncomingHttpHeaders,
    res: ClientAnswer,
    requestId: string,
  ): FlowPass | null | Promise<FlowPass | null> {
    const q = routed.ctx.path.indexOf('?');
    const id = this.#classify.classify({
      model: routed.ctx.model,
      path: q === -1 ? routed.ctx.path : routed.ctx.path.slice(0, q),
      headers,
      promptTokens: routed.ctx.promptTokens,
    });
    const arrival = this.#now();
    // Waiting requests of this class or a higher one go first: a newcomer joins the queue behind them.
    // A tenant over its fleet share goes after every other tenant's waiting requests, of any class.
    const waiting =
      this.#queue.size > 0 &&
      (this.#anyWaitingAtOrAbove(id.rank) || (this.#shares?.overShare(arrival).has(id.tenant) ?? false));
    let roomSince: number | undefined;
    if (!waiting) {
      const rule = this.#queue.size === 0 ? 'keep' : 'room';
      const p = place(routed, this.model, this.#blockSize, id.ttftMs, id.cls.onSloMiss, rule, {
        waitedMs: 0,
        maxMs: this.#c.affinityWaitMs,
        uncontested: false,
      });
      if (p.kind === 'go') return this.#pass(id, p, arrival, 'direct');
      // Its cached worker is full while others have room: the wait for it starts now.
      if (p.kind === 'affinity') roomSince = arrival;
      if (p.kind === 'slo_miss' && id.cls.onSloMiss === 'shed') {
        this.#shed(res, requestId, id, 'slo_unattainable', routed, p.bestMs);
        return null;
      }
    }
    if (!this.#makeRoom(id, res, requestId, routed)) return null;
    return new Promise<FlowPass | null>((resolve) => {
      const held: Held = {
        rank: id.rank,
        tenant: id.tenant,
        weight: id.weight,
        arrival,
        deadline: arrival + (id.deadlineMs ?? id.cls.ttlMs),
        sheddable: id.cls.sheddable,
        seq: this.#seq++,
        id,
        routed,
        res,
        requestId,
        resolve,
        timer: undefined,
        ...(roomSince === undefined ? {} : { roomSince }),
      };
      held.timer = setTimeout(() => this.#drop(held, 'ttl_expired'), id.cls.ttlMs);
      this.#queue.push(held);
      this.#shares?.queued(id.tenant, id.label, id.weight, 1, arrival);
      this.#stats.queued(id);
      // A client that hangs up while waiting frees its place at once.
      res.once('close', () => this.#drop(held, 'disconnected'));
      this.#schedule();
    });
  }

  /** `/debug/route`: the class and tenant a request would get, and the predicted TTFT on each candidate. */
  explain(routed: Routed, headers: IncomingHttpHeaders): Record<string, unknown> {
    const id = this.#classify.classify({
      model: routed.ctx.model,
      path: routed.ctx.path,
      headers,
      promptTokens: routed.ctx.promptTokens,
    });
    return {
      class: id.cls.name,
      tenant: id.label,
      ttftTargetMs: id.ttftMs ?? null,
      tpotTargetMs: id.tpotMs ?? null,
      candidates: predictions(routed, this.model, this.#blockSize),
    };
  }

  /** `/debug/flow`. */
  summary(workers: readonly WorkerView[]): unknown {
    const now = this.#now();
    const fits = this.model.summary();
    return {
      enabled: true,
      queued: this.#queue.size,
      maxQueued: this.#c.maxQueued,
      classes: this.#stats.snapshot(this.#queue, now),
      fairness: this.#c.tenants.fairness,
      ...(this.#shares ? { tenants: this.#shares.snapshot(now) } : {}),
      workers: workers.map((w) => ({
        id: w.id,
        saturated: this.model.saturated(w),
        // What the saturation test counts: the uncached parts still to prefill.
        prefillTokens: this.model.queuedPrefill(w, false),
        promptTokensInPrefill: w.load.prefillTokens,
        prefillCapacity: Math.round(this.model.prefillCapacity(w.id)),
        decodeBlocks: w.load.decodeBlocks,
        ...(fits[w.id] ?? { tokensPerSecond: this.model.tokensPerSecond(w.id), observations: 0 }),
      })),
    };
  }

  /** Wakes the queue: a request finished or reached its first token somewhere, so a worker may have room. */
  kick(): void {
    if (this.#queue.size > 0) this.#schedule();
  }

  /** Sheds everything still queued (shutdown) and stops the timers. */
  close(): void {
    this.#closed = true;
    if (this.#poll) clearTimeout(this.#poll);
    for (;;) {
      const h = this.#queue.next(() => true);
      if (!h) break;
      this.#left(h);
      this.#shed(h.res, h.requestId, h.id, 'ttl_expired', h.routed);
      h.resolve(null);
    }
  }

  #anyWaitingAtOrAbove(rank: number): boolean {
    for (let r = 0; r <= rank; r++) if (this.#queue.sizeOf(r) > 0) return true;
    return false;
  }

  /** Checks the class bound and the gateway bound; a full gateway evicts the oldest lower sheddable request. */
  #makeRoom(id: FlowIdentity, res: ClientAnswer, requestId: string, routed: Routed): boolean {
    if (this.#queue.sizeOf(id.rank) >= id.cls.maxQueued) {
      this.#shed(res, requestId, id, 'queue_full', routed);
      return false;
    }
    if (this.#queue.size < this.#c.maxQueued) return true;
    const victim = this.#queue.oldestSheddableBelow(id.rank);
    if (!victim) {
      this.#shed(res, requestId, id, 'queue_full', routed);
      return false;
    }
    this.#drop(victim, 'preempted');
    return true;
  }

  #drop(h: Held, reason: ShedReason): void {
    if (!this.#queue.remove(h)) return;
    this.#left(h);
    this.#shed(h.res, h.requestId, h.id, reason, h.routed);
    h.resolve(null);
  }

  #schedule(): void {
    if (this.#pumpScheduled || this.#closed) return;
    this.#pumpScheduled = true;
    // One release per turn of the event loop: the released request takes its load on the
    // worker (fleet.start) in between, so the next saturation check sees it.
    setImmediate(this.#pump);
  }

  #pump = (): void => {
    this.#pumpScheduled = false;
    if (this.#poll) clearTimeout(this.#poll);
    this.#poll = undefined;
    const now = this.#now();
    const hopeless = new Set<Held>();
    const over = this.#shares?.overShare(now);
    // One placement per held request and question: the preferred scan and the plain one ask the same.
    const placed = [new Map<Held, Placement>(), new Map<Held, Placement>()] as const;
    const placeHeld = (h: Held, uncontested: boolean): Placement => {
      const memo = placed[uncontested ? 1 : 0];
      let p = memo.get(h);
      if (p) return p;
      const budget = h.id.ttftMs === undefined ? undefined : h.id.ttftMs - (now - h.arrival);
      if (budget !== undefined && budget <= 0 && h.id.cls.onSloMiss !== 'route') {
        hopeless.add(h);
        p = { kind: 'saturated' };
      } else {
        p = place(h.routed, this.model, this.#blockSize, budget, h.id.cls.onSloMiss, 'rechoose', {
          waitedMs: h.roomSince === undefined ? 0 : now - h.roomSince,
          maxMs: this.#c.affinityWaitMs,
          uncontested,
          overShare: over?.has(h.tenant) ?? false,
        });
      }
      if (p.kind === 'affinity') h.roomSince ??= now;
      memo.set(h, p);
      return p;
    };
    const go = (uncontested: boolean) => (h: Held) => {
      const p = placeHeld(h, uncontested);
      if (p.kind !== 'go') return false;
      h.placement = p;
      return true;
    };
    // Per class: first a held request whose cache is on the worker that got room (charged to its
    // tenant's turn; else a request that could go anywhere takes the room, and the one waiting for
    // it there ends up moving and recomputing its prefix); then one that goes to its pick or loses
    // nothing by moving; then, before the room goes to a lower class, one that waited for its
    // cached worker as long as the recomputation would take (see place).
    const own = (h: Held) => {
      const p = placeHeld(h, false);
      return p.kind === 'go' && !p.moved && ownBlocks(p.routed) > 0 && go(false)(h);
    };
    const next = this.#next(over, go(false), own, go(true));
    for (const h of hopeless) this.#drop(h, 'slo_unattainable');
    if (next) {
      this.#left(next);
      this.#metrics.waited(next.id.cls.name, (now - next.arrival) / 1000);
      next.resolve(this.#pass(next.id, next.placement!, next.arrival, 'queued'));
      this.#schedule();
    } else if (this.#queue.size > 0 && !this.#closed) {
      this.#poll = setTimeout(this.#pump, this.#c.pollMs);
    }
  };

  /**
   * The queue's next release; with fleet fairness, first among the tenants within their share
   * (every class), and only then among all. A placement is asked once per pump (memoised), so
   * the second pass costs little.
   */
  #next(
    over: ReadonlySet<string> | undefined,
    canGo: (h: Held) => boolean,
    prefer: (h: Held) => boolean,
    fallback: (h: Held) => boolean,
  ) {
    if (over && over.size > 0) {
      const within =
        (f: (h: Held) => boolean) =>
        (h: Held): boolean =>
          !over.has(h.tenant) && f(h);
      const found = this.#queue.next(within(canGo), within(prefer), within(fallback));
      if (found) return found;
    }
    return this.#queue.next(canGo, prefer, fallback);
  }

  /** A held request left the queue (released, shed or gone). */
  #left(h: Held): void {
    clearTimeout(h.timer);
    this.#shares?.queued(h.tenant, h.id.label, h.weight, -1, this.#now());
  }

  #pass(id: FlowIdentity, p: Placement & { kind: 'go' }, arrival: number, path: 'direct' | 'queued'): FlowPass {
    this.#metrics.admitted(id.cls.name, id.label, path);
    this.#shares?.dispatched(id.tenant, id.label, id.weight, p.routed.ctx.promptTokens, this.#now());
    this.#stats.admitted(id, path, p.moved?.lostBlocks);
    const worker = p.routed.worker.id;
    const dispatched = this.#now();
    const stream = p.routed.request.stream;
    const cls = id.cls.name;
    let firstAt: number | undefined;
    const note = [
      `class=${cls}`,
      `tenant=${id.label}`,
      `wait_ms=${Math.round(dispatched - arrival)}`,
      ...(p.moved
        ? [`moved_from=${p.moved.from}`, `lost_blocks=${Math.round(p.moved.lostBlocks)}`, `move=${p.moved.reason}`]
        : []),
      ...(p.joined ? [`joined_saturated=${worker}`] : []),
    ].join('; ');
    return {
      routed: p.routed,
      note,
      observe: (inner, elsewhere) =>
        new FlowObserver(
          inner,
          {
            firstByte: (at) => {
              firstAt = at;
              // A non-streamed body's first byte is its last: it measures the whole generation, not the prefill.
              if (stream && !elsewhere?.()) this.model.observe(worker, p.prefillTokens, (at - dispatched) / 1000);
              this.#metrics.ttft(cls, id.label, (at - arrival) / 1000);
              if (id.ttftMs !== undefined) this.#slo(id, 'ttft', at - arrival <= id.ttftMs);
              this.kick();
            },
            ended: (at, status, tokens) => {
              if (
                id.tpotMs !== undefined &&
                status < 400 &&
                firstAt !== undefined &&
                tokens !== undefined &&
                tokens > 1
              )
                this.#slo(id, 'tpot', (at - firstAt) / (tokens - 1) <= id.tpotMs);
              this.kick();
            },
          },
          this.#now,
        ),
    };
  }

  #slo(id: FlowIdentity, target: 'ttft' | 'tpot', met: boolean): void {
    this.#metrics.slo(id.cls.name, target, met);
    this.#stats.slo(id, target, met);
  }

  #shed(
    res: ClientAnswer,
    requestId: string,
    id: FlowIdentity,
    reason: ShedReason,
    routed: Routed,
    bestMs?: number,
  ): void {
    this.#metrics.shed(id.cls.name, id.label, reason);
    this.#stats.shed(id, reason);
    routed.selection.armStats?.end(reason === 'disconnected' ? 499 : 429);
    if (reason === 'disconnected' || res.headersSent || res.destroyed) return;
    const body = JSON.stringify({
      error: { message: shedMessage(id, reason, bestMs), type: 'rate_limit_error', param: null, code: reason },
    });
    res.writeHead(429, {
      'x-request-id': requestId,
      'x-kvgate-priority': id.cls.name,
      'retry-after': String(this.#c.retryAfterSeconds),
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
    });
    res.end(body);
    this.#log.debug({ requestId, class: id.cls.name, tenant: id.label, reason }, 'request shed');
  }
}

function shedMessage(id: FlowIdentity, reason: ShedReason, bestMs: number | undefined): string {
  const cls = `priority class '${id.cls.name}'`;
  switch (reason) {
    case 'queue_full':
      return `every worker for this request is saturated and the gateway queue for ${cls} is full; retry later`;
    case 'ttl_expired':
      return `the request waited ${id.cls.ttlMs} ms (the limit of ${cls}) for a worker with room; retry later`;
    case 'preempted':
      return `the request was shed from the gateway queue to make room for a higher-priority request (${cls} is sheddable); retry later`;
    case 'slo_unattainable':
      return `no worker is predicted to meet the ${id.ttftMs} ms time-to-first-token target${bestMs !== undefined ? ` (best prediction ${Math.round(bestMs)} ms)` : ''} of this ${cls} request; retry later or relax the target`;
    default:
      return 'the client disconnected';
  }
}
