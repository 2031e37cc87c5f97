import type { FlowIdentity } from './classify.js';
import type { FlowConfig } from './config.js';
import type { ShedReason } from './metrics.js';
import type { FlowQueue, QueueItem } from './queue.js';

interface ClassStats {
  admitted: { direct: number; queued: number };
  /** Held requests released to another worker than the strategy's saturated pick, and the cached blocks they gave up. */
  moved: { requests: number; lostBlocks: number };
  queuedEver: number;
  shed: Partial<Record<ShedReason, number>>;
  slo: { ttft: { met: number; missed: number }; tpot: { met: number; missed: number } };
}

/** Counters behind `/debug/flow`, per class (the metrics carry the same, for scraping). */
export class FlowStats {
  readonly #config: FlowConfig;
  readonly #byClass = new Map<string, ClassStats>();

  constructor(config: FlowConfig) {
    this.#config = config;
    for (const c of config.classes)
      this.#byClass.set(c.name, {
        admitted: { direct: 0, queued: 0 },
        moved: { requests: 0, lostBlocks: 0 },
        queuedEver: 0,
        shed: {},
        slo: { ttft: { met: 0, missed: 0 }, tpot: { met: 0, missed: 0 } },
      });
  }

  queued(id: FlowIdentity): void {
    this.#byClass.get(id.cls.name)!.queuedEver++;
  }

  admitted(id: FlowIdentity, path: 'direct' | 'queued', movedLosing?: number): void {
    const s = this.#byClass.get(id.cls.name)!;
    s.admitted[path]++;
    if (movedLosing === undefined) return;
    s.moved.requests++;
    s.moved.lostBlocks += Math.round(movedLosing);
  }

  shed(id: FlowIdentity, reason: ShedReason): void {
    const s = this.#byClass.get(id.cls.name)!.shed;
    s[reason] = (s[reason] ?? 0) + 1;
  }

  slo(id: FlowIdentity, target: 'ttft' | 'tpot', met: boolean): void {
    this.#byClass.get(id.cls.name)!.slo[target][met ? 'met' : 'missed']++;
  }

  /** Queue depth per class and tenant label, the oldest wait, and the counters. */
  snapshot<T extends QueueItem & { id: FlowIdentity }>(queue: FlowQueue<T>, now: number): unknown[] {
    return this.#config.classes.map((cls, rank) => {
      const tenants: Record<string, number> = {};
      let oldest: number | undefined;
      for (const [, items] of queue.itemsOf(rank)) {
        for (const item of items) {
          tenants[item.id.label] = (tenants[item.id.label] ?? 0) + 1;
          if (oldest === undefined || item.arrival < oldest) oldest = item.arrival;
        }
      }
      const s = this.#byClass.get(cls.name)!;
      const attainment = (m: { met: number; missed: number }) =>
        m.met + m.missed === 0 ? null : Math.round((m.met / (m.met + m.missed)) * 1000) / 1000;
      return {
        name: cls.name,
        queued: queue.sizeOf(rank),
        maxQueued: cls.maxQueued,
        ttlMs: cls.ttlMs,
        oldestWaitMs: oldest === undefined ? 0 : now - oldest,
        tenants,
        admitted: s.admitted,
        moved: s.moved,
        queuedTotal: s.queuedEver,
        shed: s.shed,
        slo: {
          ttftTargetMs: cls.ttftMs ?? null,
          ttft: { ...s.slo.ttft, attainment: attainment(s.slo.ttft) },
          tpot: { ...s.slo.tpot, attainment: attainment(s.slo.tpot) },
        },
      };
    });
  }
}
