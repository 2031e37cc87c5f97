import type { FleetShape } from './run.js';
import { TRACE_BLOCK_TOKENS, type TraceRequest } from './trace.js';

/**
 * The load arithmetic of the multi-tenant bench (issue 17): what the trace offers, per
 * tenant and class, against what the simulated fleet can prefill, and what strict class
 * priority with fair sharing inside each class leaves each tenant. The well-behaved
 * tenants' target can only be met where their demand in every class fits under the fair
 * level of that class; the bench prints this so a reader can check the load it ran at.
 */

/**
 * Prefill tokens per simulated second one worker computes with every step a full chunk
 * (`maxNumBatchedTokens`) and some sequence decoding (bench/sim/timing.ts at KV usage 0).
 * An upper bound: partial chunks and fuller caches make steps dearer.
 */
export function prefillRatePerWorker(f: FleetShape): number {
  const c = f.maxNumBatchedTokens;
  const t = f.timing;
  const stepMs =
    (t['prefill-a'] ?? 0) * c * c + (t['prefill-b'] ?? 0) * c + (t['prefill-c'] ?? 0) + (t['decode-base-ms'] ?? 0);
  return stepMs > 0 ? (c * 1000) / stepMs : Infinity;
}

/**
 * Prompt tokens each request leaves to prefill with an infinite prefix cache shared by
 * every worker (the least any routing can leave): its tokens past the leading run of
 * blocks some earlier request sent. Requests are in trace order.
 */
export function uncachedTokens(trace: readonly TraceRequest[]): number[] {
  const seen = new Map<number, number>();
  return trace.map((r) => {
    let run = 0;
    let open = true;
    r.hashIds.forEach((id, j) => {
      const len = Math.min(TRACE_BLOCK_TOKENS, r.inputLength - j * TRACE_BLOCK_TOKENS);
      const had = seen.get(id);
      if (open && had !== undefined) run += Math.min(len, had);
      if (had === undefined || had < len) open = false;
      if (had === undefined || had < len) seen.set(id, len);
    });
    return r.inputLength - Math.min(run, r.inputLength - 1);
  });
}

export interface ClassShare {
  cls: string;
  /** Prefill capacity left to the class after every higher class took its demand (tokens/s). */
  left: number;
  /** The water level of max-min fair sharing among its tenants: a tenant below it gets all it asks. */
  level: number;
  /** Per tenant: demand (tokens/s) and what fair sharing gives it. */
  tenants: Record<string, { demand: number; share: number }>;
}

export interface LoadArithmetic {
  /** Simulated seconds between the first and last arrival. */
  seconds: number;
  capacity: number;
  perWorker: number;
  /** Where `perWorker` comes from. */
  capacitySource: string;
  /** The timing model's bound per worker (prefillRatePerWorker), for comparison. */
  boundPerWorker: number;
  /** Offered prefill with the infinite shared cache, and with none (tokens/s). */
  offered: number;
  offeredNoCache: number;
  byTenant: Record<string, number>;
  classes: ClassShare[];
  /** The same per `WINDOW_S` of arrivals: the trace comes in bursts, and a backlog builds in them. */
  windows: { fromS: number; load: number; classes: ClassShare[] }[];
}

const WINDOW_S = 30;

/**
 * Offered prefill per tenant and class against the fleet's capacity, and the max-min fair
 * allocation a class-first, tenant-fair scheduler reaches in the fluid limit (equal weights).
 */
export function loadArithmetic(
  trace: readonly TraceRequest[],
  labels: readonly { tenant: string; cls: string }[],
  classOrder: readonly string[],
  fleet: FleetShape,
  measured?: { perWorker: number; source: string },
): LoadArithmetic {
  const seconds = Math.max(1e-9, (trace.at(-1)!.timestamp - trace[0]!.timestamp) / 1000);
  const uncached = uncachedTokens(trace);
  const boundPerWorker = prefillRatePerWorker(fleet);
  const perWorker = measured?.perWorker ?? boundPerWorker;
  const capacitySource = measured?.source ?? 'a full chunk per step in bench/sim/timing.ts, an upper bound';
  const capacity = perWorker * fleet.workers;
  const demandOf = (keep: (i: number) => boolean, span: number) => {
    const demand = new Map<string, Map<string, number>>(classOrder.map((c) => [c, new Map()]));
    let total = 0;
    trace.forEach((_, i) => {
      if (!keep(i)) return;
      const { tenant, cls } = labels[i]!;
      const d = demand.get(cls)!;
      d.set(tenant, (d.get(tenant) ?? 0) + uncached[i]! / span);
      total += uncached[i]! / span;
    });
    return { shares: shares(demand, classOrder, capacity), total };
  };
  const whole = demandOf(() => true, seconds);
  const byTenant: Record<string, number> = {};
  for (const c of whole.shares)
    for (const [t, v] of Object.entries(c.tenants)) byTenant[t] = (byTenant[t] ?? 0) + v.demand;
  const t0 = trace[0]!.timestamp;
  const windows: LoadArithmetic['windows'] = [];
  for (let from = 0; from < seconds; from += WINDOW_S) {
    const w = demandOf((i) => {
      const at = (trace[i]!.timestamp - t0) / 1000;
      return at >= from && at < from + WINDOW_S;
    }, WINDOW_S);
    windows.push({ fromS: from, load: w.total / capacity, classes: w.shares });
  }
  const offered = whole.total;
  const noCache = trace.reduce((n, r) => n + r.inputLength, 0) / seconds;
  const classes = whole.shares;
  return {
    seconds,
    capacity,
    perWorker,
    capacitySource,
    boundPerWorker,
    offered,
    offeredNoCache: noCache,
    byTenant,
    classes,
    windows,
  };
}

/** Strict class order, max-min fair sharing inside each class (fluid limit, equal weights). */
function shares(
  demand: ReadonlyMap<string, ReadonlyMap<string, number>>,
  classOrder: readonly string[],
  capacity: number,
): ClassShare[] {
  let left = capacity;
  return classOrder.map((cls) => {
    const d = demand.get(cls)!;
    const level = waterLevel([...d.values()], Math.max(0, left));
    const tenants: ClassShare['tenants'] = {};
    for (const [t, v] of [...d].sort()) tenants[t] = { demand: v, share: Math.min(v, level) };
    const out = { cls, left: Math.max(0, left), level, tenants };
    left -= [...d.values()].reduce((a, b) => a + b, 0);
    return out;
  });
}

/** The level L with sum(min(demand, L)) = capacity; Infinity when every demand fits. */
export function waterLevel(demands: readonly number[], capacity: number): number {
  const sorted = [...demands].sort((a, b) => a - b);
  let avail = capacity;
  for (let i = 0; i < sorted.length; i++) {
    const share = avail / (sorted.length - i);
    if (sorted[i]! > share) return share;
    avail -= sorted[i]!;
  }
  return Infinity;
}

/** The markdown section: offered load against capacity, and the fair levels per class. */
export function renderLoad(a: LoadArithmetic, wellBehaved: readonly string[]): string[] {
  const k = (x: number) => (Number.isFinite(x) ? `${(x / 1000).toFixed(1)}k` : 'all');
  const pc = (x: number) => `${((x / a.capacity) * 100).toFixed(0)}%`;
  const lines = [
    '## Offered load against capacity',
    '',
    `Capacity: ${k(a.capacity)} prefill tokens per simulated second, ${k(a.perWorker)} per worker (${a.capacitySource}; the timing model's bound, a full chunk every step: ${k(a.boundPerWorker)}).`,
    `Offered: ${k(a.offered)} tokens/s left to prefill with an infinite shared prefix cache (the least any routing leaves), ${k(a.offeredNoCache)} with none: **${(a.offered / a.capacity).toFixed(2)}x capacity** (${(a.offeredNoCache / a.capacity).toFixed(2)}x uncached).`,
    `Per tenant: ${Object.entries(a.byTenant)
      .sort()
      .map(([t, v]) => `${t} ${k(v)} (${pc(v)})`)
      .join(', ')}; a quarter of capacity is ${k(a.capacity / 4)}.`,
    '',
    "Classes are served strictly in order and tenants share a class fairly, so each class gets what the classes above leave, split by max-min fairness (fluid limit, equal weights). A well-behaved tenant whose demand in a class reaches that class's fair level cannot get all it asks under this load, whatever the scheduler does:",
    '',
    '| class | capacity left | fair level per tenant | ' +
      wellBehaved.map((t) => `${t} demand / level`).join(' | ') +
      ' |',
    '| --- | --- | --- | ' + wellBehaved.map(() => '---').join(' | ') + ' |',
  ];
  for (const c of a.classes) {
    const ratio = (t: string) => {
      const d = c.tenants[t]?.demand ?? 0;
      return Number.isFinite(c.level) ? (d / c.level).toFixed(2) : `${k(d)} (fits)`;
    };
    lines.push(
      `| ${c.cls} | ${k(c.left)} (${pc(c.left)}) | ${Number.isFinite(c.level) ? k(c.level) : 'no limit'} | ${wellBehaved.map(ratio).join(' | ')} |`,
    );
  }
  const worst = (c: ClassShare) => {
    if (!Number.isFinite(c.level)) return 'fits';
    const r = Math.max(...wellBehaved.map((t) => (c.tenants[t]?.demand ?? 0) / c.level));
    return r >= 1 ? `**${r.toFixed(2)}**` : r.toFixed(2);
  };
  lines.push(
    '',
    `The same per ${WINDOW_S} s of arrivals (the trace comes in bursts; a backlog built in one window carries into the next). Per class, the largest well-behaved tenant demand over the fair level, bold where it cannot all be served:`,
    '',
    `| arrivals | offered / capacity | ${a.classes.map((c) => c.cls).join(' | ')} |`,
    `| --- | --- | ${a.classes.map(() => '---').join(' | ')} |`,
    ...a.windows.map(
      (w) => `| ${w.fromS}-${w.fromS + WINDOW_S} s | ${w.load.toFixed(2)} | ${w.classes.map(worst).join(' | ')} |`,
    ),
    '',
  );
  return lines;
}
