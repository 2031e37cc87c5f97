import type { SkipCountsAll } from './diagnostics.js';
import type { KvEventBatch } from './types.js';

/**
 * Where a source delivers one worker's batches. The source guarantees order:
 * `apply` sees sequence numbers strictly increasing, gaps already replayed.
 * When it cannot guarantee that (replay missing or incomplete, sequence went
 * backwards because the engine restarted), it calls `reset` first, and the
 * sink must drop everything it knows about that worker.
 */
export interface EventSink {
  apply(batch: KvEventBatch): void;
  /** `rank` given: only that data-parallel rank's sequence broke; otherwise the whole worker. */
  reset(reason: string, rank?: number | null): void;
}

/** Counters every source keeps, for `/debug/workers` and metrics. */
export interface EventSourceStats {
  /** The endpoint or URL it reads from. */
  endpoint: string;
  connected: boolean;
  lastSeq: bigint | null;
  batchesApplied: number;
  batchesReplayed: number;
  /** Sequence gaps seen (each triggers a replay request). */
  gaps: number;
  /** Times the worker's index had to be cleared (restart, failed replay). */
  resets: number;
  /** Payloads that could not be decoded and were skipped. */
  decodeErrors: number;
  /** Wall-clock ms (Date.now) of the last batch received, null before the first. */
  lastBatchAt: number | null;
  /** Receive time minus engine timestamp of the last batch, in ms; null while the engine's stamps are implausible. */
  lagMs: number | null;
  /** Events (or whole batches, for `bad-seq`) skipped, by reason; each skip costs only itself. */
  skippedByReason: SkipCountsAll;
  /** Sum of `skippedByReason`. */
  eventsSkipped: number;
  /** Warnings not logged because of the per-worker rate limit. */
  suppressedWarnings: number;
  /** Batches whose engine timestamp was too far from our clock to mean anything (lag left as it was). */
  ignoredTimestamps: number;
  /** Engine restarts noticed (sequence went backwards, or a replay proved the history is not ours). */
  restarts: number;
  /** Replays that recovered batches we had missed; and when the last one did (ms, Date.now). */
  catchUps: number;
  lastCatchUpAt: number | null;
  /** Replay probes sent (reconnect, health recovery, periodic). */
  probes: number;
  /** Live batches skipped because a replay had delivered them first. */
  liveDuplicates: number;
}

/** A source's counters before its first batch. */
export function initialStats(endpoint: string): EventSourceStats {
  return {
    endpoint,
    connected: false,
    lastSeq: null,
    batchesApplied: 0,
    batchesReplayed: 0,
    gaps: 0,
    resets: 0,
    decodeErrors: 0,
    lastBatchAt: null,
    lagMs: null,
    skippedByReason: {},
    eventsSkipped: 0,
    suppressedWarnings: 0,
    ignoredTimestamps: 0,
    restarts: 0,
    catchUps: 0,
    lastCatchUpAt: null,
    probes: 0,
    liveDuplicates: 0,
  };
}

/**
 * One engine's KV event stream, as an adapter: ZeroMQ (vLLM, SGLang, TRT-LLM's
 * publisher) or HTTP polling (trtllm-serve `/kv_cache_events`). One instance per worker.
 */
export interface EventSource {
  readonly workerId: string;
  start(sink: EventSink): Promise<void>;
  stop(): Promise<void>;
  stats(): EventSourceStats;
  /**
   * Checks with the engine that nothing was lost and it did not restart (replay
   * from our last batch). Called when the worker comes back from a health
   * failure. A no-op for transports that cannot replay.
   */
  probe(): void;
}
