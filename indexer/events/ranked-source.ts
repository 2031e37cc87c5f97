import type { EventSink, EventSource, EventSourceStats } from './source.js';

/**
 * One worker served by several data-parallel ranks, each publishing its own
 * stream with its own sequence numbers and replay socket: one child source per
 * rank, seen from outside as one source. Each rank resets only its own target.
 */
export class RankedEventSource implements EventSource {
  readonly #ranks: readonly EventSource[];

  constructor(
    readonly workerId: string,
    ranks: readonly EventSource[],
  ) {
    this.#ranks = ranks;
  }

  async start(sink: EventSink): Promise<void> {
    for (const r of this.#ranks) await r.start(sink);
  }

  async stop(): Promise<void> {
    await Promise.all(this.#ranks.map((r) => r.stop()));
  }

  probe(): void {
    for (const r of this.#ranks) r.probe();
  }

  stats(): EventSourceStats & { ranks: EventSourceStats[] } {
    const all = this.#ranks.map((r) => r.stats());
    const sum = (k: keyof EventSourceStats) => all.reduce((n, s) => n + ((s[k] as number | null) ?? 0), 0);
    const max = (k: 'lastBatchAt' | 'lastCatchUpAt' | 'lagMs') =>
      all.reduce<number | null>((m, s) => (s[k] === null ? m : m === null ? s[k] : Math.max(m, s[k])), null);
    const skippedByReason: Record<string, number> = {};
    for (const s of all)
      for (const [k, v] of Object.entries(s.skippedByReason)) skippedByReason[k] = (skippedByReason[k] ?? 0) + v;
    return {
      endpoint: all.map((s) => s.endpoint).join(' '),
      connected: all.every((s) => s.connected),
      lastSeq: null,
      batchesApplied: sum('batchesApplied'),
      batchesReplayed: sum('batchesReplayed'),
      gaps: sum('gaps'),
      resets: sum('resets'),
      decodeErrors: sum('decodeErrors'),
      lastBatchAt: max('lastBatchAt'),
      lagMs: max('lagMs'),
      skippedByReason,
      eventsSkipped: sum('eventsSkipped'),
      suppressedWarnings: sum('suppressedWarnings'),
      ignoredTimestamps: sum('ignoredTimestamps'),
      restarts: sum('restarts'),
      catchUps: sum('catchUps'),
      lastCatchUpAt: max('lastCatchUpAt'),
      probes: sum('probes'),
      liveDuplicates: sum('liveDuplicates'),
      ranks: all,
    };
  }
}

/** vLLM's data-parallel port scheme: rank r binds the configured port + r, for the publisher and the replay socket alike. */
export function offsetPort(endpoint: string, by: number): string {
  const m = /^(tcp:\/\/.+):(\d+)$/.exec(endpoint);
  if (!m) throw new Error(`cannot offset the port of ${endpoint}: dataParallelSize needs tcp://host:port endpoints`);
  return `${m[1]}:${Number(m[2]) + by}`;
}
