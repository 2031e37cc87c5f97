import { Counter, Gauge, type Registry } from 'prom-client';
import { BREAKER_STATE_CODE, type BreakerState } from '../proxy/breaker.js';
import type { Fleet } from '../fleet/fleet.js';

/**
 * Breaker metrics, read from the breakers at scrape time so the request path
 * carries no metric code: `kvgate_worker_breaker_state{worker}` (0 closed,
 * 1 half-open, 2 open) and `kvgate_worker_breaker_transitions_total{worker,to}`.
 */
export function registerBreakerMetrics(registry: Registry, fleet: Fleet): void {
  const registers = [registry];
  new Gauge({
    name: 'kvgate_worker_breaker_state',
    help: 'Circuit breaker state per worker: 0 closed, 1 half-open, 2 open',
    labelNames: ['worker'],
    registers,
    collect() {
      for (const w of fleet.workers) this.set({ worker: w.id }, BREAKER_STATE_CODE[w.breaker.state]);
    },
  });
  const last = new Map<string, number>();
  new Counter({
    name: 'kvgate_worker_breaker_transitions_total',
    help: 'Circuit breaker state changes per worker, by the state entered',
    labelNames: ['worker', 'to'],
    registers,
    collect() {
      for (const w of fleet.workers) {
        for (const to of ['closed', 'half-open', 'open'] as BreakerState[]) {
          const key = `${w.id}\0${to}`;
          const value = w.breaker.transitions[to];
          this.inc({ worker: w.id, to }, value - (last.get(key) ?? 0));
          last.set(key, value);
        }
      }
    },
  });
}
