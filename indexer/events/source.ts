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
  /** Receive time minus engine timestamp of the last batch, in ms. */
  lagMs: number | null;
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
}
