import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { KvServices } from '../kv-services.js';

const TOKENIZE_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25];

/** `kvgate_tokenize_seconds`; the returned observer is handed to the KV services, which tokenize. */
export function registerTokenizeMetric(registry: Registry): (seconds: number) => void {
  const tokenize = new Histogram({
    name: 'kvgate_tokenize_seconds',
    help: 'Time to turn a request into token ids (template, segment cache, encode)',
    buckets: TOKENIZE_BUCKETS,
    registers: [registry],
  });
  return (seconds) => tokenize.observe(seconds);
}

/**
 * KV index and event-stream metrics. They are read from the indexer's and the
 * sources' own counters at scrape time, so the event hot path carries no
 * metric code: counters advance by the difference since the last scrape.
 */
export function registerKvMetrics(registry: Registry, kv: Pick<KvServices, 'indexers' | 'sources'>): void {
  const registers = [registry];

  new Gauge({
    name: 'kvgate_kv_index_nodes',
    help: 'Blocks (radix nodes) in the KV index, per model',
    labelNames: ['model'],
    registers,
    collect() {
      for (const [model, i] of kv.indexers) this.set({ model }, i.stats().nodes);
    },
  });
  new Gauge({
    name: 'kvgate_kv_index_max_nodes',
    help: 'Node cap of the KV index, per model',
    labelNames: ['model'],
    registers,
    collect() {
      for (const [model, i] of kv.indexers) this.set({ model }, i.stats().maxNodes);
    },
  });
  new Gauge({
    name: 'kvgate_kv_indexed_blocks',
    help: 'Blocks the index holds for each worker (all ranks and tiers)',
    labelNames: ['worker'],
    registers,
    collect() {
      for (const i of kv.indexers.values())
        for (const [worker, w] of Object.entries(i.stats().perWorker)) this.set({ worker }, w.blocks);
    },
  });
  new Gauge({
    name: 'kvgate_kv_event_lag_seconds',
    help: 'Receive time minus engine timestamp of the last KV event batch',
    labelNames: ['worker'],
    registers,
    collect() {
      for (const [worker, s] of kv.sources) {
        const lag = s.stats().lagMs;
        if (lag !== null) this.set({ worker }, lag / 1000);
      }
    },
  });
  new Gauge({
    name: 'kvgate_kv_events_connected',
    help: "1 while the worker's KV event stream is connected",
    labelNames: ['worker'],
    registers,
    collect() {
      for (const [worker, s] of kv.sources) this.set({ worker }, s.stats().connected ? 1 : 0);
    },
  });
  const sourceCounters = [
    ['kvgate_kv_event_batches_applied_total', 'KV event batches applied, per worker', 'batchesApplied'],
    [
      'kvgate_kv_event_batches_replayed_total',
      'KV event batches recovered by replay after a sequence gap',
      'batchesReplayed',
    ],
    ['kvgate_kv_event_gaps_total', 'Sequence gaps seen in KV event streams', 'gaps'],
    ['kvgate_kv_event_resets_total', "Times a worker's index was cleared (engine restart, failed replay)", 'resets'],
    [
      'kvgate_kv_event_decode_errors_total',
      'KV event payloads that could not be decoded and were dropped',
      'decodeErrors',
    ],
    [
      'kvgate_kv_event_restarts_total',
      'Engine restarts noticed (sequence went backwards, or a replay showed a history that is not ours)',
      'restarts',
    ],
    ['kvgate_kv_event_catchups_total', 'Replays that recovered KV event batches the gateway had missed', 'catchUps'],
    ['kvgate_kv_event_probes_total', 'Replay probes sent (reconnect, health recovery, periodic)', 'probes'],
    [
      'kvgate_kv_event_live_duplicates_total',
      'Live KV event batches skipped because a replay had already delivered them',
      'liveDuplicates',
    ],
    [
      'kvgate_kv_event_warnings_suppressed_total',
      'KV event warnings not logged because of the per-worker rate limit',
      'suppressedWarnings',
    ],
  ] as const;
  for (const [name, help, field] of sourceCounters) {
    cumulative(registry, name, help, () => [...kv.sources].map(([worker, s]) => [worker, s.stats()[field]]));
  }
  const skipped = new Map<string, number>();
  new Counter({
    name: 'kvgate_kv_events_skipped_total',
    help: 'KV events skipped alone (the rest of their batch applied), per worker and reason',
    labelNames: ['worker', 'reason'],
    registers,
    collect() {
      for (const [worker, s] of kv.sources) {
        for (const [reason, value] of Object.entries(s.stats().skippedByReason)) {
          const key = `${worker}\u0000${reason}`;
          const prev = skipped.get(key) ?? 0;
          this.inc({ worker, reason }, value >= prev ? value - prev : value);
          skipped.set(key, value);
        }
      }
    },
  });
  const indexCounters = [
    ['kvgate_kv_blocks_stored_total', 'Blocks stored by KV events, per worker', 'blocksStored'],
    ['kvgate_kv_blocks_removed_total', 'Blocks removed by KV events, per worker', 'blocksRemoved'],
    [
      'kvgate_kv_events_unknown_parent_total',
      'Stored events dropped because their parent block was never seen',
      'unknownParent',
    ],
    [
      'kvgate_kv_events_block_size_mismatch_total',
      'Events dropped because their block_size differs from the configured one',
      'blockSizeMismatch',
    ],
    ['kvgate_kv_blocks_rejected_total', 'Blocks not indexed because the index node cap was reached', 'rejectedBlocks'],
  ] as const;
  for (const [name, help, field] of indexCounters) {
    cumulative(registry, name, help, () =>
      [...kv.indexers.values()].flatMap((i) =>
        Object.entries(i.stats().perWorker).map(([w, s]) => [w, s[field]] as [string, number]),
      ),
    );
  }
}

/** A per-worker counter that mirrors a cumulative count kept elsewhere (a reset below the last value restarts from it). */
function cumulative(registry: Registry, name: string, help: string, read: () => [string, number][]): void {
  const last = new Map<string, number>();
  new Counter({
    name,
    help,
    labelNames: ['worker'],
    registers: [registry],
    collect() {
      for (const [worker, value] of read()) {
        const prev = last.get(worker) ?? 0;
        const delta = value >= prev ? value - prev : value;
        if (delta > 0) this.inc({ worker }, delta);
        else this.inc({ worker }, 0);
        last.set(worker, value);
      }
    },
  });
}
