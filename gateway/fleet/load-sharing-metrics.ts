import { Counter, Gauge, type Registry } from 'prom-client';
import type { LoadSharing } from './load-sharing.js';

/** Load sharing's metrics, read from its counts at each scrape. */
export function registerLoadSharingMetrics(registry: Registry, sharing: LoadSharing): void {
  new Gauge({
    name: 'kvgate_load_sharing_peers',
    help: 'Other gateway replicas heard from within staleAfterMs',
    registers: [registry],
    collect() {
      this.set(sharing.peers);
    },
  });
  new Counter({
    name: 'kvgate_load_sharing_snapshots_total',
    help: 'Full load snapshots published by this replica (sent) and taken from other replicas (received)',
    labelNames: ['direction'],
    registers: [registry],
    collect() {
      this.reset();
      const c = sharing.counts;
      this.inc({ direction: 'sent' }, c.snapshotsSent);
      this.inc({ direction: 'received' }, c.snapshotsReceived);
    },
  });
  new Counter({
    name: 'kvgate_load_sharing_deltas_total',
    help: 'Load deltas (one per routed request, first token and end) published by this replica and received from others',
    labelNames: ['direction'],
    registers: [registry],
    collect() {
      this.reset();
      const c = sharing.counts;
      this.inc({ direction: 'sent' }, c.deltasSent);
      this.inc({ direction: 'received' }, c.deltasReceived);
    },
  });
  new Counter({
    name: 'kvgate_load_sharing_decision_waits_total',
    help: "Routing decisions that waited for other replicas' earlier ones (orderDecisions), by how the wait ended",
    labelNames: ['outcome'],
    registers: [registry],
    collect() {
      this.reset();
      const c = sharing.counts.order;
      if (!c) return;
      this.inc({ outcome: 'their_turn_ended' }, c.waited - c.timedOut);
      this.inc({ outcome: 'timed_out' }, c.timedOut);
    },
  });
  new Counter({
    name: 'kvgate_load_sharing_decision_wait_seconds_total',
    help: "Time routing decisions spent waiting for other replicas' earlier ones (orderDecisions)",
    registers: [registry],
    collect() {
      this.reset();
      this.inc((sharing.counts.order?.waitedMs ?? 0) / 1000);
    },
  });
  new Counter({
    name: 'kvgate_load_sharing_delta_age_seconds_total',
    help: "Summed age on receipt of other replicas' delta batches (their clock against ours: one host or synced clocks); over kvgate_load_sharing_delta_batches_received_total, the mean time a decision elsewhere takes to be seen here",
    registers: [registry],
    collect() {
      this.reset();
      this.inc(sharing.counts.deltaAgeSumMs / 1000);
    },
  });
  new Counter({
    name: 'kvgate_load_sharing_delta_batches_received_total',
    help: "Other replicas' delta batches received",
    registers: [registry],
    collect() {
      this.reset();
      this.inc(sharing.counts.deltaAgeCount);
    },
  });
  new Counter({
    name: 'kvgate_load_sharing_delta_batches_total',
    help: 'NATS messages carrying deltas published by this replica (one per event-loop tick with changes)',
    registers: [registry],
    collect() {
      this.reset();
      this.inc(sharing.counts.deltaBatchesSent);
    },
  });
}
