import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { UsageError } from '../lib/flags.js';
import type { RequestResult } from './client.js';
import { DEFAULT_TRACE, FLEET_DEFAULTS, progressLine } from './replay.js';
import { runStrategy, type FleetShape, type RunResult } from './run.js';
import { readTrace, type TraceRequest } from './trace.js';

/**
 * Multi-tenant mode of the replay bench (issue 17): the Mooncake conversation trace with
 * tenants assigned per conversation (one tenant sending three times the others' share),
 * some conversations critical and some sheddable, on a fleet too small for the load.
 * Three runs in one: flow control off, flow control on, and the same flow control with
 * the noisy tenant's requests removed (the reference for the targets).
 *
 *   npm run bench:tenants -- [--limit N] [--workers N] [--speedup X] [--prefill-tokens N]
 */
const TENANTS = ['noisy', 'noisy', 'noisy', 'alpha', 'beta', 'gamma'];
const WELL_BEHAVED = ['alpha', 'beta', 'gamma'];
type FlowClass = 'critical' | 'standard' | 'sheddable';
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

function flowConfig(prefillTokens: number, speedup: number): Record<string, unknown> {
  // TTLs are real milliseconds: simulated seconds / speed-up.
  const ms = (simS: number) => Math.round((simS * 1000) / speedup);
  return {
    flow: {
      enabled: true,
      classes: [
        { name: 'critical', maxQueued: 512, ttlMs: ms(120) },
        { name: 'standard', maxQueued: 512, ttlMs: ms(60) },
        { name: 'sheddable', maxQueued: 256, ttlMs: ms(30), sheddable: true },
      ],
      saturation: { default: { prefillTokens } },
      pollMs: 10,
    },
  };
}

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

interface Group {
  requests: number;
  ok: number;
  shed: number;
  failed: number;
  p50: number;
  p99: number;
  goodput: number;
}

interface RunSummary {
  name: string;
  wallS: number;
  hitRate: number;
  byTenant: Record<string, Group>;
  byClass: Record<string, Group>;
  wellBehaved: Group;
  all: Group;
}

function group(results: RequestResult[], labels: ReturnType<typeof assign>[], speedup: number, durS: number): Group {
  const ok = results.filter((r) => r.ok);
  const ttft = ok.map((r) => (r.ttftMs * speedup) / 1000);
  const good = ok.filter((r) => (r.ttftMs * speedup) / 1000 <= TARGET_S[labels[r.index]!.cls]).length;
  return {
    requests: results.length,
    ok: ok.length,
    shed: results.filter((r) => r.status === 429).length,
    failed: results.filter((r) => !r.ok && r.status !== 429).length,
    p50: pct(ttft, 50),
    p99: pct(ttft, 99),
    goodput: good / durS,
  };
}

function summarise(name: string, run: RunResult, labels: ReturnType<typeof assign>[], f: FleetShape, durS: number) {
  const by = (key: (l: ReturnType<typeof assign>) => string) => {
    const out: Record<string, Group> = {};
    const keys = [...new Set(run.results.map((r) => key(labels[r.index]!)))].sort();
    for (const k of keys)
      out[k] = group(
        run.results.filter((r) => key(labels[r.index]!) === k),
        labels,
        f.speedup,
        durS,
      );
    return out;
  };
  const q = run.workers.reduce((n, w) => n + w.prefixQueryTokens, 0);
  const h = run.workers.reduce((n, w) => n + w.prefixHitTokens, 0);
  return {
    name,
    wallS: run.wallMs / 1000,
    hitRate: q === 0 ? 0 : h / q,
    byTenant: by((l) => l.tenant),
    byClass: by((l) => l.cls),
    wellBehaved: group(
      run.results.filter((r) => WELL_BEHAVED.includes(labels[r.index]!.tenant)),
      labels,
      f.speedup,
      durS,
    ),
    all: group(run.results, labels, f.speedup, durS),
  } satisfies RunSummary;
}

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      trace: { type: 'string' },
      limit: { type: 'string' },
      workers: { type: 'string' },
      speedup: { type: 'string' },
      'prefill-tokens': { type: 'string' },
      out: { type: 'string' },
    },
    strict: true,
  });
  const int = (name: string, fallback: number, min: number) => {
    const raw = values[name as keyof typeof values];
    if (raw === undefined) return fallback;
    const v = Number(raw);
    if (!Number.isFinite(v) || v < min) throw new UsageError(`--${name} must be a number >= ${min}, got ${raw}`);
    return v;
  };
  const limit = int('limit', 3000, 1);
  const fleet: FleetShape = { ...FLEET_DEFAULTS, workers: int('workers', 4, 1), speedup: int('speedup', 25, 1) };
  const prefillTokens = int('prefill-tokens', 32_768, 1);
  const trace = readTrace(values.trace ?? DEFAULT_TRACE, limit);
  const labels = trace.map(assign);
  const durS = (trace[trace.length - 1]!.timestamp - trace[0]!.timestamp) / 1000;
  const headers = (i: number) => ({ 'x-kvgate-tenant': labels[i]!.tenant, 'x-kvgate-priority': labels[i]!.cls });
  const kvParams = { prefillWeight: 2 };
  const progress = (label: string) => (p: Parameters<typeof progressLine>[1]) =>
    process.stderr.write(progressLine(label, p));

  const runs: RunSummary[] = [];
  const off = await runStrategy('kv', kvParams, trace, fleet, progress('flow off'), { headers });
  runs.push(summarise('flow off', off, labels, fleet, durS));
  const extra = flowConfig(prefillTokens, fleet.speedup);
  const on = await runStrategy('kv', kvParams, trace, fleet, progress('flow on'), { headers, extra });
  runs.push(summarise('flow on', on, labels, fleet, durS));
  // The reference: the same flow control without the noisy tenant (also the "normal load" run).
  const keep = trace.map((_, i) => i).filter((i) => labels[i]!.tenant !== 'noisy');
  const quietTrace = keep.map((i) => trace[i]!);
  const quietLabels = keep.map((i) => labels[i]!);
  const quiet = await runStrategy('kv', kvParams, quietTrace, fleet, progress('noisy removed'), {
    headers: (i) => ({ 'x-kvgate-tenant': quietLabels[i]!.tenant, 'x-kvgate-priority': quietLabels[i]!.cls }),
    extra,
  });
  runs.push(summarise('flow on, noisy tenant removed', quiet, quietLabels, fleet, durS));

  const [offS, onS, quietS] = runs as [RunSummary, RunSummary, RunSummary];
  const targets = {
    wellBehavedP99Ratio: onS.wellBehaved.p99 / quietS.wellBehaved.p99,
    wellBehavedP99RatioOff: offS.wellBehaved.p99 / quietS.wellBehaved.p99,
    criticalP99Ratio: onS.byClass.critical!.p99 / quietS.byClass.critical!.p99,
    criticalP99RatioOff: offS.byClass.critical!.p99 / quietS.byClass.critical!.p99,
    hitRateDeltaPoints: (onS.hitRate - offS.hitRate) * 100,
  };
  const report = {
    command: `npm run bench:tenants${argv.length ? ` -- ${argv.join(' ')}` : ''}`,
    date: new Date().toISOString(),
    trace: values.trace ?? DEFAULT_TRACE,
    requests: trace.length,
    traceSeconds: durS,
    fleet,
    flow: extra,
    targetsS: TARGET_S,
    runs,
    targets,
  };
  const out = values.out ?? fileURLToPath(new URL('../../../bench/results', import.meta.url));
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'replay-tenants.json'), `${JSON.stringify(report, null, 2)}\n`);
  const md = render(report);
  writeFileSync(join(out, 'replay-tenants.md'), md);
  process.stdout.write(md);
}

function render(r: {
  command: string;
  date: string;
  requests: number;
  traceSeconds: number;
  fleet: FleetShape;
  runs: RunSummary[];
  targets: Record<string, number>;
}): string {
  const f = (x: number | undefined, d = 2) => (x !== undefined && Number.isFinite(x) ? x.toFixed(d) : '-');
  const row = (run: string, key: string, g: Group) =>
    `| ${run} | ${key} | ${g.requests} | ${g.ok} | ${g.shed} | ${g.failed} | ${f(g.p50)} | ${f(g.p99)} | ${f(g.goodput)} |`;
  const lines = [
    '# Multi-tenant replay: flow control off vs on',
    '',
    `Command: \`${r.command}\``,
    `Date: ${r.date}. ${r.requests} requests of the conversation trace (${f(r.traceSeconds, 0)} s), ${r.fleet.workers} simulated workers, speed-up ${r.fleet.speedup}, strategy kv.`,
    'Tenants per conversation (first prompt block): noisy 3/6 of conversations, alpha, beta, gamma 1/6 each; classes per conversation: 15% critical, 55% standard, 30% sheddable.',
    `Latencies in simulated seconds; goodput = requests per simulated second meeting their class's TTFT target (critical 5 s, standard 15 s, sheddable 30 s).`,
    '',
    '| run | hit rate | well-behaved p50 | well-behaved p99 | all goodput | shed | wall s |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...r.runs.map(
      (x) =>
        `| ${x.name} | ${f(x.hitRate * 100, 1)}% | ${f(x.wellBehaved.p50)} | ${f(x.wellBehaved.p99)} | ${f(x.all.goodput)} | ${x.all.shed} | ${f(x.wallS, 0)} |`,
    ),
    '',
    '| run | tenant / class | requests | ok | shed (429) | failed | TTFT p50 s | p99 s | goodput/s |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const x of r.runs) {
    for (const [k, g] of Object.entries(x.byTenant)) lines.push(row(x.name, k, g));
    for (const [k, g] of Object.entries(x.byClass)) lines.push(row(x.name, k, g));
  }
  const t = r.targets;
  lines.push(
    '',
    '## Against the issue targets',
    '',
    `- Well-behaved tenants' p99 TTFT, flow on / noisy removed: ${f(t.wellBehavedP99Ratio)} (target <= 1.2; flow off: ${f(t.wellBehavedP99RatioOff)})`,
    `- Critical p99 TTFT under overload / at normal load (noisy removed): ${f(t.criticalP99Ratio)} (target <= 1.2; flow off: ${f(t.criticalP99RatioOff)})`,
    `- Hit rate, flow on minus off: ${f(t.hitRateDeltaPoints, 1)} points (target within 2)`,
    '',
  );
  return lines.join('\n');
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
