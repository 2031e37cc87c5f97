import type { FleetShape } from './run.js';
import { renderLoad, type LoadArithmetic } from './tenant-load.js';

/** TTFTs in simulated seconds; goodput per simulated second. */
export interface Group {
  requests: number;
  ok: number;
  shed: number;
  failed: number;
  p50: number;
  p90: number;
  p99: number;
  goodput: number;
}

export interface RunSummary {
  name: string;
  wallS: number;
  hitRate: number;
  /** Hit rate an infinite shared cache would reach over the requests this run served (shed turns never warm it). */
  servedBound: number;
  byTenant: Record<string, Group>;
  byClass: Record<string, Group>;
  wellBehavedByClass: Record<string, Group>;
  wellBehaved: Group;
  all: Group;
  /** The most real ms any simulated engine fell behind its clock, and the client's p99 lateness: the machine kept up when both are small. */
  simLagMs: number;
  lateP99Ms: number;
  /** Flow on: what flow control did to each tenant's requests (from their `x-kvgate-flow` headers). */
  moved?: FlowActions;
  /** The gateway's `/debug/flow` at the end (flow on only). */
  flow?: unknown;
  /** A flow-on run with the noisy tenant: the name of its reference run (same flow config, noisy tenant removed). */
  reference?: string;
}

/** Per tenant: held requests that joined their saturated cached pick, and moves off one by reason (`move=` in the header). */
export type FlowActions = Record<
  string,
  { joined: number; moves: Record<string, { requests: number; lostBlocks: number }> }
>;

export interface TenantReport {
  command: string;
  date: string;
  trace: string;
  requests: number;
  traceSeconds: number;
  fleet: FleetShape;
  flow: Record<string, unknown>;
  targetsS: Record<string, number>;
  wellBehaved: readonly string[];
  load: LoadArithmetic;
  runs: RunSummary[];
  /** With `--repeat N`: every repetition's runs (the first is `runs`), without the gateway's `/debug/flow`. */
  repetitions?: RunSummary[][];
}

/** The issue's three targets for each flow-on run, each on the same requests in both runs it compares. */
export function targets(r: TenantReport): Record<string, Record<string, number>> {
  const off = r.runs[0]!;
  const out: Record<string, Record<string, number>> = {};
  for (const on of r.runs) {
    const quiet = r.runs.find((x) => x.name === on.reference);
    if (quiet) out[on.name] = runTargets(off, on, quiet);
  }
  return out;
}

function runTargets(off: RunSummary, on: RunSummary, quiet: RunSummary): Record<string, number> {
  const wc = (x: RunSummary) => x.wellBehavedByClass.critical!;
  return {
    wellBehavedP99Ratio: on.wellBehaved.p99 / quiet.wellBehaved.p99,
    wellBehavedP99RatioOff: off.wellBehaved.p99 / quiet.wellBehaved.p99,
    wellBehavedP90Ratio: on.wellBehaved.p90 / quiet.wellBehaved.p90,
    ...Object.fromEntries(
      Object.keys(quiet.wellBehavedByClass).map((c) => [
        `wellBehaved.${c}.p99Ratio`,
        on.wellBehavedByClass[c]!.p99 / quiet.wellBehavedByClass[c]!.p99,
      ]),
    ),
    // The critical requests present in both runs: the well-behaved tenants'.
    criticalP99Ratio: wc(on).p99 / wc(quiet).p99,
    criticalP99RatioOff: wc(off).p99 / wc(quiet).p99,
    criticalP90Ratio: wc(on).p90 / wc(quiet).p90,
    // Every critical request under overload against the well-behaved ones at normal load: not the same requests.
    criticalAllP99Ratio: on.byClass.critical!.p99 / quiet.byClass.critical!.p99,
    criticalAllP99RatioOff: off.byClass.critical!.p99 / quiet.byClass.critical!.p99,
    hitRateDeltaPoints: (on.hitRate - off.hitRate) * 100,
    servedBoundDeltaPoints: (on.servedBound - off.servedBound) * 100,
  };
}

export function renderTenants(r: TenantReport): { text: string; targets: Record<string, Record<string, number>> } {
  const f = (x: number | undefined, d = 2) => (x !== undefined && Number.isFinite(x) ? x.toFixed(d) : '-');
  const row = (run: string, key: string, g: Group) =>
    `| ${run} | ${key} | ${g.requests} | ${g.ok} | ${g.shed} | ${g.failed} | ${f(g.p50)} | ${f(g.p90)} | ${f(g.p99)} | ${f(g.goodput)} |`;
  const flow = r.flow.flow as { saturation: { prefillQueueMs: number; default?: unknown }; affinityWaitMs: number };
  const simS = (ms: number) => f((ms * r.fleet.speedup) / 1000, 1);
  const lines = [
    '# Multi-tenant replay: flow control off vs on',
    '',
    `Command: \`${r.command}\``,
    `Date: ${r.date}. ${r.requests} requests of the conversation trace (${f(r.traceSeconds, 0)} s), ${r.fleet.workers} simulated workers, speed-up ${r.fleet.speedup}, strategy kv.`,
    'Tenants per conversation (first prompt block): noisy 3/6 of conversations, alpha, beta, gamma 1/6 each; classes per conversation: 15% critical, 55% standard, 30% sheddable.',
    `Flow control: a worker is saturated at ${flow.saturation.default ? JSON.stringify(flow.saturation.default) : `${simS(flow.saturation.prefillQueueMs)} s of queued prefill at its learned speed`}; a request whose cached pick is saturated moves, joins it (adding at most ${((flow.saturation as { affinityOverflow?: number }).affinityOverflow ?? 1) - 1}x that) or waits by predicted TTFT; affinityWaitMs ${simS(flow.affinityWaitMs)} s; TTLs critical 120 s, standard 60 s, sheddable 30 s. Tenant fairness \`class\`: tenants share each class fairly, classes strictly in order; \`fleet\`: the same, except that a tenant over 1.25x its fair share of recently dispatched prompt tokens (half-life ${simS((flow as { tenants?: { fleetShare?: { halfLifeMs?: number } } }).tenants?.fleetShare?.halfLifeMs ?? 0)} s) goes after every other tenant, whatever the class.`,
    `Latencies in simulated seconds; goodput = requests per simulated second meeting their class's TTFT target (critical ${r.targetsS.critical} s, standard ${r.targetsS.standard} s, sheddable ${r.targetsS.sheddable} s). p99 of fewer than 100 requests is their maximum.`,
    '',
    ...renderLoad(r.load, r.wellBehaved),
    '## Runs',
    '',
    '"served bound": the hit rate an infinite shared cache would reach on the requests the run served. "sim lag": the most real ms any simulated engine fell behind its clock; "late p99": how far behind schedule the client sent (real ms).',
    '',
    '| run | hit rate | served bound | well-behaved p50 | p90 | p99 | all goodput | shed | sim lag ms | late p99 ms | wall s |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...r.runs.map(
      (x) =>
        `| ${x.name} | ${f(x.hitRate * 100, 1)}% | ${f(x.servedBound * 100, 1)}% | ${f(x.wellBehaved.p50)} | ${f(x.wellBehaved.p90)} | ${f(x.wellBehaved.p99)} | ${f(x.all.goodput)} | ${x.all.shed} | ${f(x.simLagMs, 0)} | ${f(x.lateP99Ms, 0)} | ${f(x.wallS, 0)} |`,
    ),
    '',
    'Well-behaved tenants by class:',
    '',
    '| run | class | requests | ok | shed (429) | failed | TTFT p50 s | p90 s | p99 s | goodput/s |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const x of r.runs) for (const [k, g] of Object.entries(x.wellBehavedByClass)) lines.push(row(x.name, k, g));
  lines.push(
    '',
    'Every tenant and class:',
    '',
    '| run | tenant / class | requests | ok | shed (429) | failed | TTFT p50 s | p90 s | p99 s | goodput/s |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  );
  for (const x of r.runs) {
    for (const [k, g] of Object.entries(x.byTenant)) lines.push(row(x.name, k, g));
    for (const [k, g] of Object.entries(x.byClass)) lines.push(row(x.name, k, g));
  }
  const moved = r.runs.filter((x) => x.moved);
  if (moved.length > 0) {
    const reasons = [
      ...new Set(moved.flatMap((x) => Object.values(x.moved!).flatMap((t) => Object.keys(t.moves)))),
    ].sort();
    lines.push(
      '',
      "Held requests released to another worker than the strategy's saturated cached pick, by reason (`move=` in `x-kvgate-flow`: requests, cached blocks given up), and those that joined it:",
      '',
      `| run | tenant | ${reasons.map((m) => `moved: ${m}`).join(' | ')} | joined |`,
      `| --- | --- | ${reasons.map(() => '---').join(' | ')} | --- |`,
    );
    for (const x of moved)
      for (const [tenant, a] of Object.entries(x.moved!).sort(([p], [q]) => p.localeCompare(q)))
        lines.push(
          `| ${x.name} | ${tenant} | ${reasons
            .map((m) => (a.moves[m] ? `${a.moves[m].requests} (${a.moves[m].lostBlocks})` : '0'))
            .join(' | ')} | ${a.joined} |`,
        );
  }
  const all = targets(r);
  lines.push('', '## Against the issue targets');
  for (const [name, t] of Object.entries(all)) {
    const quiet = r.runs.find((x) => x.name === r.runs.find((y) => y.name === name)!.reference)!;
    lines.push(
      '',
      `### ${name} (reference: ${quiet.name})`,
      '',
      `- Well-behaved tenants' p99 TTFT, flow on / noisy removed: ${f(t.wellBehavedP99Ratio)} (target <= 1.2; flow off: ${f(t.wellBehavedP99RatioOff)}; p90: ${f(t.wellBehavedP90Ratio)}). By class: ${Object.keys(
        quiet.wellBehavedByClass,
      )
        .map((c) => `${c} ${f(t[`wellBehaved.${c}.p99Ratio`])}`)
        .join(', ')}`,
      `- Critical p99 TTFT under overload / at normal load (noisy removed), the well-behaved tenants' critical requests, present in both: ${f(t.criticalP99Ratio)} (target <= 1.2; flow off: ${f(t.criticalP99RatioOff)}; p90: ${f(t.criticalP90Ratio)}). Every critical request under overload (the noisy tenant's too) against those at normal load: ${f(t.criticalAllP99Ratio)} (flow off: ${f(t.criticalAllP99RatioOff)})`,
      `- Hit rate, flow on minus off: ${f(t.hitRateDeltaPoints, 1)} points (target within 2; of which the served requests' bound: ${f(t.servedBoundDeltaPoints, 1)})`,
    );
  }
  if (r.repetitions) lines.push(...renderRepetitions(r, f));
  lines.push('');
  return { text: lines.join('\n'), targets: all };
}

/** The three targets in every repetition and their median: each p99 here rests on a few requests. */
function renderRepetitions(r: TenantReport, f: (x: number | undefined, d?: number) => string): string[] {
  const per = r.repetitions!.map((runs) => targets({ ...r, runs }));
  const lines = [
    '',
    `## Every repetition (${per.length})`,
    '',
    '| flow-on run | repetition | well-behaved p99 ratio (<= 1.2) | critical p99 ratio (<= 1.2) | hit rate points (>= -2) | all three met |',
    '| --- | --- | --- | --- | --- | --- |',
  ];
  const median = (xs: number[]) => {
    const s = [...xs].sort((a, b) => a - b);
    const m = s.length >> 1;
    return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
  };
  const met = (t: { well: number; critical: number; hit: number }) =>
    t.well <= 1.2 && t.critical <= 1.2 && t.hit >= -2 ? 'yes' : 'no';
  for (const name of Object.keys(per[0]!)) {
    const rows = per.map((t) => ({
      well: t[name]!.wellBehavedP99Ratio!,
      critical: t[name]!.criticalP99Ratio!,
      hit: t[name]!.hitRateDeltaPoints!,
    }));
    rows.forEach((t, i) =>
      lines.push(`| ${name} | ${i + 1} | ${f(t.well)} | ${f(t.critical)} | ${f(t.hit, 1)} | ${met(t)} |`),
    );
    const m = {
      well: median(rows.map((t) => t.well)),
      critical: median(rows.map((t) => t.critical)),
      hit: median(rows.map((t) => t.hit)),
    };
    const count = rows.filter((t) => met(t) === 'yes').length;
    lines.push(
      `| **${name}** | **median** | **${f(m.well)}** | **${f(m.critical)}** | **${f(m.hit, 1)}** | ${met(m)} (${count} of ${rows.length} repetitions) |`,
    );
  }
  return lines;
}
