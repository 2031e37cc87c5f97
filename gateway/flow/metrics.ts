import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

const WAIT_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

export type ShedReason = 'queue_full' | 'ttl_expired' | 'preempted' | 'slo_unattainable' | 'disconnected';

/**
 * Flow control's series. Labels are bounded: `class` by the config, `tenant` by
 * `tenants.maxLabels` (then `other`), `reason` and `result` by the code.
 */
export class FlowMetrics {
  readonly #admitted: Counter<'class' | 'tenant' | 'path'>;
  readonly #shed: Counter<'class' | 'tenant' | 'reason'>;
  readonly #wait: Histogram<'class'>;
  readonly #ttft: Histogram<'class' | 'tenant'>;
  readonly #slo: Counter<'class' | 'target' | 'result'>;
  readonly #cache = new Map<string, { inc(): void } | { observe(v: number): void }>();

  constructor(
    registry: Registry,
    queued: () => Iterable<[string, number]>,
    useShares?: () => Iterable<{ tenant: string; useShare: number; overShare: boolean }>,
  ) {
    const registers = [registry];
    this.#admitted = new Counter({
      name: 'kvgate_flow_admitted_total',
      help: 'Requests flow control let through, by class, tenant and path (direct: no wait; queued: released after a wait)',
      labelNames: ['class', 'tenant', 'path'],
      registers,
    });
    this.#shed = new Counter({
      name: 'kvgate_flow_shed_total',
      help: 'Requests flow control answered 429 (or lost to a client disconnect while queued), by class, tenant and reason',
      labelNames: ['class', 'tenant', 'reason'],
      registers,
    });
    this.#wait = new Histogram({
      name: 'kvgate_flow_queue_wait_seconds',
      help: 'Time released requests waited in the gateway, by class',
      labelNames: ['class'],
      buckets: WAIT_BUCKETS,
      registers,
    });
    this.#ttft = new Histogram({
      name: 'kvgate_flow_ttft_seconds',
      help: 'Time to first token from arrival at the gateway (queue wait included), by class and tenant',
      labelNames: ['class', 'tenant'],
      buckets: WAIT_BUCKETS,
      registers,
    });
    this.#slo = new Counter({
      name: 'kvgate_flow_slo_total',
      help: 'Requests with a latency target, by class, target (ttft, tpot) and result (met, missed)',
      labelNames: ['class', 'target', 'result'],
      registers,
    });
    new Gauge({
      name: 'kvgate_flow_queued_requests',
      help: 'Requests waiting in the gateway, by class',
      labelNames: ['class'],
      registers,
      collect() {
        for (const [cls, n] of queued()) this.set({ class: cls }, n);
      },
    });
    if (!useShares) return;
    new Gauge({
      name: 'kvgate_flow_tenant_use_share',
      help: "Each active tenant's share of recently dispatched prompt tokens (tenants.fairness: fleet)",
      labelNames: ['tenant'],
      registers,
      collect() {
        this.reset();
        const byLabel = new Map<string, number>();
        for (const t of useShares()) byLabel.set(t.tenant, (byLabel.get(t.tenant) ?? 0) + t.useShare);
        for (const [tenant, share] of byLabel) this.set({ tenant }, share);
      },
    });
    new Gauge({
      name: 'kvgate_flow_tenants_over_share',
      help: "Active tenants over their fleet share, whose held requests go after every other tenant's",
      registers,
      collect() {
        let n = 0;
        for (const t of useShares()) if (t.overShare) n++;
        this.set(n);
      },
    });
  }

  admitted(cls: string, tenant: string, path: 'direct' | 'queued'): void {
    this.#count(this.#admitted, `a\0${cls}\0${tenant}\0${path}`, [cls, tenant, path]);
  }

  shed(cls: string, tenant: string, reason: ShedReason): void {
    this.#count(this.#shed, `s\0${cls}\0${tenant}\0${reason}`, [cls, tenant, reason]);
  }

  waited(cls: string, seconds: number): void {
    this.#observe(this.#wait, `w\0${cls}`, [cls], seconds);
  }

  ttft(cls: string, tenant: string, seconds: number): void {
    this.#observe(this.#ttft, `t\0${cls}\0${tenant}`, [cls, tenant], seconds);
  }

  slo(cls: string, target: 'ttft' | 'tpot', met: boolean): void {
    const result = met ? 'met' : 'missed';
    this.#count(this.#slo, `o\0${cls}\0${target}\0${result}`, [cls, target, result]);
  }

  #count(c: Counter<string>, key: string, values: string[]): void {
    let child = this.#cache.get(key) as { inc(): void } | undefined;
    if (!child) this.#cache.set(key, (child = c.labels(...values)));
    child.inc();
  }

  #observe(h: Histogram<string>, key: string, values: string[], v: number): void {
    let child = this.#cache.get(key) as { observe(v: number): void } | undefined;
    if (!child) this.#cache.set(key, (child = h.labels(...values)));
    child.observe(v);
  }
}
