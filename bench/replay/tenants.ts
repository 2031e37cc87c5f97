import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseBenchFlags, UsageError } from '../lib/flags.js';
import type { RequestResult } from './client.js';
import { DEFAULT_TRACE, FLEET_DEFAULTS, progressLine } from './replay.js';
import { runStrategy, type FleetShape, type RunResult } from './run.js';
import { loadArithmetic } from './tenant-load.js';
import { renderTenants, type FlowActions, type Group, type RunSummary, type TenantReport } from './tenant-report.js';
import { readTrace, upperBound, type TraceRequest } from './trace.js';

/**
 * Multi-tenant mode of the replay bench (issue 17): the Mooncake conversation trace with
 * tenants assigned per conversation (one tenant sending three times the others' share),
 * some conversations critical and some sheddable, on a fleet too small for the load.
 * Three runs in one: flow control off, flow control on, and the same flow control with
 * the noisy tenant's requests removed (the reference for the targets, and the "normal load").
 *
 *   npm run bench:tenants -- [--limit 500] [--workers 6] [--speedup 5] [--queue-s 1] [--affinity-s 50] [--prefill-tokens N] [--fairness both] [--affinity-overflow 2] [--name X]
 *
 * `--fairness` picks the tenant fairness of the flow-on runs: `class` (tenants share each class,
 * classes strictly in order), `fleet` (a tenant over its fleet share goes after every other
 * tenant, whatever the class) or `both` (the default): each flow-on run has its own reference
 * run with the same config and the noisy tenant removed.
 *
 * The load level decides whether the targets can be met at all, so the report prints the
 * arithmetic (tenant-load.ts): offered prefill (what an infinite shared prefix cache would
 * leave to compute) against the fleet's capacity (measured in the flow-off run), and per
 * class the fair level each tenant gets when classes go strictly in order and tenants share
 * a class fairly, over the whole run and per 30 s of arrivals. The issue asks for total
 * demand above capacity; a well-behaved tenant can keep its normal latency only where its
 * demand stays below the fair level in every class. The defaults are the issue's run: the
 * first 500 requests on 6 workers offer 1.10x capacity (7 workers: 0.94x, no overload);
 * critical and standard fit for every tenant in every window, but sheddable traffic (30% of
 * conversations, 38% of prompt tokens) is left 30% of capacity, and in the bursts at
 * 0-30 s and 60-90 s a well-behaved tenant's sheddable demand is 1.2x and 4x its fair level
 * there. None of the trace prefixes checked (300 to 1,500 requests on 5 to 7 workers) is
 * overloaded on average without such a burst, so the report gives the well-behaved ratio
 * per class beside the issue's all-classes figure.
 * Every target compares the same requests in both runs.
 */
const HELP = `Multi-tenant replay: flow control off, on, and on with the noisy tenant removed, on the Mooncake
conversation trace (tenants per conversation, one sending 3x the others' share; critical, standard and sheddable
classes); prints the load arithmetic and the issue's targets; writes bench/results/replay-tenants[-NAME].{md,json}.
Defaults: --limit 500 --workers 6 --speedup 5 --queue-s 1 --affinity-s 50 --fairness both (class, fleet or both)
--affinity-overflow 2 (1: a held request never joins its saturated pick) --repeat 1 (N: the whole set N times,
tables from the first, each repetition's targets and their median at the end: the p99s are a few requests each).
The trace defaults to ../shared/traces/mooncake/conversation_trace.jsonl from the repository root.
Usage: npm run bench:tenants -- [flags]`;

const TENANTS = ['noisy', 'noisy', 'noisy', 'alpha', 'beta', 'gamma'];
const WELL_BEHAVED = ['alpha', 'beta', 'gamma'];
const CLASSES = ['critical', 'standard', 'sheddable'] as const;
type FlowClass = (typeof CLASSES)[number];
/** TTFT targets (simulated seconds) for goodput, per class. */
const TARGET_S: Record<FlowClass, number> = { critical: 5, standard: 15, sheddable: 30 };

/** Conversations are keyed by their first own prompt block: every turn resends it. */
function mix(n: number, salt: number): number {
  let h = Math.imul(n ^ salt, 0x9e3779b1);
  h ^= h >>> 15;
  h = Math.imul(h, 0x85ebca6b);
  return (h ^ (h >>> 13)) >>> 0;
}

export function assign(req: TraceRequest): { tenant: string; cls: FlowClass } {
  // Block 0 is a system prompt most conversations share; the next block is the conversation's own.
  const conv = req.hashIds[1] ?? req.hashIds[0] ?? 0;
  const tenant = TENANTS[mix(conv, 1) % TENANTS.length]!;
  const c = mix(conv, 2) % 100;
  return { tenant, cls: c < 15 ? 'critical' : c < 70 ? 'standard' : 'sheddable' };
}
type Label = ReturnType<typeof assign>;

type Fairness = 'class' | 'fleet';

function flowConfig(
  queueS: number,
  prefillTokens: number | undefined,
  affinityS: number,
  speedup: number,
  fairness: Fairness,
  affinityOverflow: number,
): Record<string, unknown> {
  // Times in the config are real milliseconds: simulated seconds / speed-up.
  const ms = (simS: number) => Math.round((simS * 1000) / speedup);
  return {
    flow: {
      enabled: true,
      classes: [
        { name: 'critical', maxQueued: 512, ttlMs: ms(120) },
        { name: 'standard', maxQueued: 512, ttlMs: ms(60) },
        { name: 'sheddable', maxQueued: 256, ttlMs: ms(30), sheddable: true },
      ],
      // A worker is saturated once its queued prefill would take `queueS` at its learned speed:
      // beyond that a request released to it waits in its engine's first-come queue, where
      // priority no longer applies. A token count (--prefill-tokens) replaces the learned bound.
      saturation:
        prefillTokens === undefined
          ? { prefillQueueMs: ms(queueS), affinityOverflow }
          : { default: { prefillTokens }, prefillQueueMs: ms(queueS), affinityOverflow },
      // Default 50 s: the config's 10 real s at speed-up 5, in simulated time for every speed-up.
      affinityWaitMs: ms(affinityS),
      pollMs: 10,
      // The fleet share's half-life: 10 real s by default, 50 simulated s at speed-up 5.
      tenants: { fairness, fleetShare: { halfLifeMs: ms(50) } },
    },
  };
}

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

function group(results: RequestResult[], labels: readonly Label[], speedup: number, durS: number): Group {
  const ok = results.filter((r) => r.ok);
  const ttft = ok.map((r) => (r.ttftMs * speedup) / 1000);
  const good = ok.filter((r) => (r.ttftMs * speedup) / 1000 <= TARGET_S[labels[r.index]!.cls]).length;
  return {
    requests: results.length,
    ok: ok.length,
    shed: results.filter((r) => r.status === 429).length,
    failed: results.filter((r) => !r.ok && r.status !== 429).length,
    p50: pct(ttft, 50),
    p90: pct(ttft, 90),
    p99: pct(ttft, 99),
    goodput: good / durS,
  };
}

function summarise(
  name: string,
  run: RunResult,
  trace: readonly TraceRequest[],
  labels: readonly Label[],
  f: FleetShape,
  durS: number,
): RunSummary {
  const g = (keep: (l: Label) => boolean) =>
    group(
      run.results.filter((r) => keep(labels[r.index]!)),
      labels,
      f.speedup,
      durS,
    );
  const by = (key: (l: Label) => string, keep: (l: Label) => boolean = () => true) => {
    const out: Record<string, Group> = {};
    const keys = [...new Set(run.results.map((r) => key(labels[r.index]!)))].sort();
    for (const k of keys) out[k] = g((l) => keep(l) && key(l) === k);
    return out;
  };
  const well = (l: Label) => WELL_BEHAVED.includes(l.tenant);
  const q = run.workers.reduce((n, w) => n + w.prefixQueryTokens, 0);
  const h = run.workers.reduce((n, w) => n + w.prefixHitTokens, 0);
  // What an infinite shared cache could hit of the requests this run served: shed turns never warm the cache.
  const served = upperBound(
    run.results.filter((r) => r.ok).map((r) => trace[r.index]!),
    f.blockSize,
  );
  return {
    name,
    wallS: run.wallMs / 1000,
    hitRate: q === 0 ? 0 : h / q,
    servedBound: served.tokenRate,
    byTenant: by((l) => l.tenant),
    byClass: by((l) => l.cls),
    wellBehavedByClass: by((l) => l.cls, well),
    wellBehaved: g(well),
    all: g(() => true),
    simLagMs: Math.max(0, ...run.workers.map((w) => w.lostMs ?? 0)),
    lateP99Ms: pct(
      run.results.map((r) => r.lateMs),
      99,
    ),
    ...(run.flow ? { moved: flowActions(run.results, labels) } : {}),
    ...(run.flow ? { flow: run.flow } : {}),
  };
}

/**
 * What flow control did to each tenant's requests, read from their `x-kvgate-flow` headers:
 * moves off a saturated cached pick by reason (requests and cached blocks given up), and joins of one.
 */
function flowActions(results: readonly { index: number; flow?: string }[], labels: readonly Label[]): FlowActions {
  const out: FlowActions = {};
  for (const r of results) {
    if (!r.flow) continue;
    const fields = Object.fromEntries(r.flow.split('; ').map((kv) => kv.split('=') as [string, string]));
    const t = (out[labels[r.index]!.tenant] ??= { joined: 0, moves: {} });
    if (fields.joined_saturated) t.joined++;
    if (!fields.moved_from) continue;
    const m = (t.moves[fields.move ?? 'unknown'] ??= { requests: 0, lostBlocks: 0 });
    m.requests++;
    m.lostBlocks += Number(fields.lost_blocks ?? 0);
  }
  return out;
}

async function main(argv: string[]): Promise<void> {
  const { values } = parseBenchFlags(HELP, {
    args: argv,
    options: {
      trace: { type: 'string' },
      limit: { type: 'string' },
      workers: { type: 'string' },
      speedup: { type: 'string' },
      'prefill-tokens': { type: 'string' },
      'queue-s': { type: 'string' },
      'affinity-s': { type: 'string' },
      fairness: { type: 'string' },
      'affinity-overflow': { type: 'string' },
      out: { type: 'string' },
      name: { type: 'string' },
      repeat: { type: 'string' },
    },
    strict: true,
  });
  const num = (name: string, fallback: number, min: number) => {
    const raw = values[name as keyof typeof values];
    if (raw === undefined) return fallback;
    const v = Number(raw);
    if (!Number.isFinite(v) || v < min) throw new UsageError(`--${name} must be a number >= ${min}, got ${raw}`);
    return v;
  };
  const limit = num('limit', 500, 1);
  const fleet: FleetShape = { ...FLEET_DEFAULTS, workers: num('workers', 6, 1), speedup: num('speedup', 5, 1) };
  const prefillTokens = values['prefill-tokens'] === undefined ? undefined : num('prefill-tokens', 0, 1);
  const queueS = num('queue-s', 1, 0.001);
  const affinityS = num('affinity-s', 50, 0);
  const overflow = num('affinity-overflow', 2, 1);
  const repeat = num('repeat', 1, 1);
  const fairnessFlag = values.fairness ?? 'both';
  if (!['class', 'fleet', 'both'].includes(fairnessFlag))
    throw new UsageError(`--fairness must be class, fleet or both, got ${fairnessFlag}`);
  const modes: Fairness[] = fairnessFlag === 'both' ? ['class', 'fleet'] : [fairnessFlag as Fairness];
  const trace = readTrace(values.trace ?? DEFAULT_TRACE, limit);
  const labels = trace.map(assign);
  const durS = (trace[trace.length - 1]!.timestamp - trace[0]!.timestamp) / 1000;
  const headers = (i: number) => ({ 'x-kvgate-tenant': labels[i]!.tenant, 'x-kvgate-priority': labels[i]!.cls });
  const kvParams = { prefillWeight: 2 };
  const progress = (label: string) => (p: Parameters<typeof progressLine>[1]) =>
    process.stderr.write(progressLine(label, p));

  // The reference: the same flow control without the noisy tenant (also the "normal load" run).
  const keep = trace.map((_, i) => i).filter((i) => labels[i]!.tenant !== 'noisy');
  const quietTrace = keep.map((i) => trace[i]!);
  const quietLabels = keep.map((i) => labels[i]!);
  const measure = async (rep: number) => {
    const tag = repeat > 1 ? ` [${rep + 1}/${repeat}]` : '';
    const off = await runStrategy('kv', kvParams, trace, fleet, progress(`flow off${tag}`), { headers });
    const flowRuns: { fairness: Fairness; on: RunResult; quiet: RunResult }[] = [];
    for (const fairness of modes) {
      const extra = flowConfig(queueS, prefillTokens, affinityS, fleet.speedup, fairness, overflow);
      const on = await runStrategy('kv', kvParams, trace, fleet, progress(`flow on, ${fairness}${tag}`), {
        headers,
        extra,
      });
      const quiet = await runStrategy('kv', kvParams, quietTrace, fleet, progress(`noisy removed, ${fairness}${tag}`), {
        headers: (i) => ({ 'x-kvgate-tenant': quietLabels[i]!.tenant, 'x-kvgate-priority': quietLabels[i]!.cls }),
        extra,
      });
      flowRuns.push({ fairness, on, quiet });
    }
    return { off, flowRuns };
  };
  const summariseAll = (m: Awaited<ReturnType<typeof measure>>): RunSummary[] => {
    const runs = [summarise('flow off', m.off, trace, labels, fleet, durS)];
    for (const x of m.flowRuns) {
      const name = `flow on, ${x.fairness} fairness`;
      const reference = `${name}, noisy tenant removed`;
      runs.push(
        { ...summarise(name, x.on, trace, labels, fleet, durS), reference },
        summarise(reference, x.quiet, quietTrace, quietLabels, fleet, durS),
      );
    }
    return runs;
  };
  const first = await measure(0);
  const { off, flowRuns } = first;
  const repetitions = [summariseAll(first)];
  for (let rep = 1; rep < repeat; rep++) repetitions.push(summariseAll(await measure(rep)));
  // Per-request results of every run, for diagnosis.
  if (process.env.KVGATE_REPLAY_DUMP)
    writeFileSync(
      process.env.KVGATE_REPLAY_DUMP,
      JSON.stringify({
        labels,
        quietIndex: keep,
        off: off.results,
        ...Object.fromEntries(
          flowRuns.flatMap((x) => [
            [`on-${x.fairness}`, x.on.results],
            [`quiet-${x.fairness}`, x.quiet.results],
          ]),
        ),
      }),
    );
  // The fleet's capacity as the overloaded run measured it: prefill tokens per simulated second of
  // engine steps that computed prefill (decode steps riding along and partial chunks included).
  const busyS = off.workers.reduce((n, w) => n + (w.prefillBusyMs ?? 0), 0) / 1000;
  const computed = off.workers.reduce((n, w) => n + w.prefillTokensComputed, 0);
  const load = loadArithmetic(
    trace,
    labels,
    CLASSES,
    fleet,
    busyS > 0
      ? {
          perWorker: computed / (busyS * fleet.speedup),
          source: 'measured in the flow-off run: prefill computed per busy second',
        }
      : undefined,
  );
  process.stderr.write(
    `offered ${(load.offered / 1000).toFixed(1)}k prefill tokens/s against ${(load.capacity / 1000).toFixed(1)}k: ${(load.offered / load.capacity).toFixed(2)}x capacity\n`,
  );
  const runs = repetitions[0]!;
  const report: TenantReport = {
    command: `npm run bench:tenants${argv.length ? ` -- ${argv.join(' ')}` : ''}`,
    date: new Date().toISOString(),
    trace: values.trace ?? DEFAULT_TRACE,
    requests: trace.length,
    traceSeconds: durS,
    fleet,
    flow: flowConfig(queueS, prefillTokens, affinityS, fleet.speedup, modes[0]!, overflow),
    targetsS: TARGET_S,
    wellBehaved: WELL_BEHAVED,
    load,
    runs,
    ...(repeat > 1 ? { repetitions: repetitions.map((reps) => reps.map(({ flow: _flow, ...rest }) => rest)) } : {}),
  };
  const out = values.out ?? fileURLToPath(new URL('../../../bench/results', import.meta.url));
  mkdirSync(out, { recursive: true });
  const md = renderTenants(report);
  // --name keeps a variant's results beside the main ones (replay-tenants-<name>.*).
  const base = join(out, `replay-tenants${values.name ? `-${values.name}` : ''}`);
  writeFileSync(`${base}.json`, `${JSON.stringify({ ...report, targets: md.targets }, null, 2)}\n`);
  writeFileSync(`${base}.md`, md.text);
  process.stdout.write(md.text);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`bench:tenants: ${(err as Error).message}\n`);
      process.exit(2);
    }
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
