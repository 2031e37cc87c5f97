import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { kvParamsSchema } from '../../gateway/routing/strategies/kv.js';
import { markdownTable } from '../lib/child.js';
import { parseReplayFlags, progressLine } from './replay.js';
import { runStrategy } from './run.js';
import { summarise } from './summary.js';
import { linePanel, svgDocument } from './svg.js';
import { readTrace, upperBound } from './trace.js';

/**
 * Sensitivity of `kv` to its prefill weight and to the KV capacity per worker
 * (a grid), then to its reuse credit (a line at the default weight and
 * capacity): one replay per point (fresh fleet each), a prefix of the trace.
 *
 *   npm run bench:sweep -- [--prefill-weights 1,4,16] [--kv-blocks-grid 65536,163840,327680] [--reuse-credits 0,3,20,50,200] [--limit 2000] [replay flags]
 * Writes bench/results/replay-sweep.{md,json,svg}.
 */
function takeList(argv: string[], flag: string, fallback: number[]): number[] {
  const i = argv.indexOf(flag);
  if (i < 0) return fallback;
  const raw = argv.splice(i, 2)[1] ?? '';
  const values = raw.split(',').map(Number);
  if (values.length === 0 || values.some((v) => !Number.isFinite(v) || v < 0)) {
    process.stderr.write(`sweep: ${flag} must be a comma-separated list of numbers >= 0, got ${raw}\n`);
    process.exit(2);
  }
  return values;
}

interface Cell {
  prefillWeight: number;
  reuseCredit: number;
  kvBlocks: number;
  ttftMean: number;
  ttftP90: number;
  hitRate: number;
  ofUpperBound: number;
  imbalance: number;
  failed: number;
  lateP99: number;
  simLagMs: number;
}

const HELP = `Sensitivity of kv to its prefill weight and KV capacity per worker (a grid), then to its reuse credit
(a line): one replay per point on a fresh fleet; writes bench/results/replay-sweep.{md,json,svg}.
Usage: npm run bench:sweep -- [--prefill-weights 1,4,16] [--kv-blocks-grid 65536,163840,327680]
         [--reuse-credits 0,3,20,50,200] [replay flags]   (--limit defaults to 2000 here)
Replay flags: see \`npm run bench:replay -- --help\`. The trace defaults to
../shared/traces/mooncake/conversation_trace.jsonl from the repository root.`;

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(HELP);
    return;
  }
  const defaults = kvParamsSchema.parse({});
  const weights = takeList(argv, '--prefill-weights', [1, 4, 16]);
  const capacities = takeList(argv, '--kv-blocks-grid', [65_536, 163_840, 327_680]);
  const credits = takeList(argv, '--reuse-credits', [0, 3, 20, 50, 200]);
  if (!argv.includes('--limit')) argv.push('--limit', '2000');
  const o = parseReplayFlags(argv);
  const trace = readTrace(o.trace, o.limit);
  const bound = upperBound(trace, o.fleet.blockSize);
  const base = { ...defaults, ...(o.params.kv ?? {}) };
  const points = [
    ...capacities.flatMap((kvBlocks) =>
      weights.map((prefillWeight) => ({ kvBlocks, prefillWeight, reuseCredit: base.reuseCredit })),
    ),
    ...credits.map((reuseCredit) => ({ kvBlocks: o.fleet.kvBlocks, prefillWeight: base.prefillWeight, reuseCredit })),
  ];
  const cells: Cell[] = [];
  for (const [i, pt] of points.entries()) {
    const label = `${i + 1}/${points.length} kv pw=${pt.prefillWeight} rc=${pt.reuseCredit} blocks=${pt.kvBlocks}`;
    const run = await runStrategy(
      'kv',
      { ...base, prefillWeight: pt.prefillWeight, reuseCredit: pt.reuseCredit },
      trace,
      { ...o.fleet, kvBlocks: pt.kvBlocks },
      (p) => process.stderr.write(progressLine(label, p)),
    );
    const s = summarise('kv', run.results, run.workers, bound, o.fleet.speedup);
    cells.push({
      ...pt,
      ttftMean: s.ttft.mean,
      ttftP90: s.ttft.p90,
      hitRate: s.hitRate,
      ofUpperBound: s.ofUpperBound,
      imbalance: s.prefillImbalance,
      failed: s.failed,
      lateP99: s.lateness.p99,
      simLagMs: s.simLostMs,
    });
    process.stderr.write(
      `[${label}] TTFT mean ${s.ttft.mean.toFixed(2)} s, hit ${(s.hitRate * 100).toFixed(1)}% (${(s.ofUpperBound * 100).toFixed(0)}% of bound)\n`,
    );
  }
  const grid = cells.slice(0, capacities.length * weights.length);
  const line = cells.slice(grid.length);
  const header = [
    'KV blocks/worker',
    'tokens/worker',
    'prefillWeight',
    'reuseCredit',
    'TTFT mean s',
    'TTFT p90 s',
    'hit rate',
    '% of bound',
    'max/mean prefill',
    'failed',
    'late p99 ms',
    'sim lag ms',
  ];
  const row = (c: Cell) => [
    c.kvBlocks,
    `${((c.kvBlocks * o.fleet.blockSize) / 1e6).toFixed(2)}M`,
    c.prefillWeight,
    c.reuseCredit,
    c.ttftMean.toFixed(2),
    c.ttftP90.toFixed(2),
    `${(c.hitRate * 100).toFixed(1)}%`,
    `${(c.ofUpperBound * 100).toFixed(1)}%`,
    c.imbalance.toFixed(2),
    c.failed,
    c.lateP99.toFixed(0),
    c.simLagMs.toFixed(0),
  ];
  const byCapacity = (value: (c: Cell) => number) =>
    capacities.map((kb) => ({
      name: `${kb} blocks/worker`,
      points: grid.filter((c) => c.kvBlocks === kb).map((c) => [c.prefillWeight, value(c)] as const),
    }));
  const byCredit = (value: (c: Cell) => number) => [
    {
      name: `prefillWeight ${base.prefillWeight}, ${o.fleet.kvBlocks} blocks`,
      points: line.map((c) => [c.reuseCredit, value(c)] as const),
    },
  ];
  const pctAxis = (v: number) => `${(v * 100).toFixed(0)}%`;
  const svg = svgDocument(
    900,
    820,
    [
      linePanel(
        byCapacity((c) => c.ttftMean),
        weights,
        60,
        50,
        260,
        280,
        'kv: mean TTFT (simulated s)',
        'prefillWeight',
        (v) => v.toFixed(1),
      ),
      linePanel(
        byCapacity((c) => c.hitRate),
        weights,
        480,
        50,
        240,
        280,
        'kv: prefix hit rate (tokens)',
        'prefillWeight',
        pctAxis,
      ),
      ...(line.length
        ? [
            linePanel(
              byCredit((c) => c.ttftMean),
              credits,
              60,
              450,
              260,
              280,
              'kv: mean TTFT (simulated s)',
              'reuseCredit',
              (v) => v.toFixed(1),
            ),
            linePanel(
              byCredit((c) => c.hitRate),
              credits,
              480,
              450,
              240,
              280,
              'kv: prefix hit rate (tokens)',
              'reuseCredit',
              pctAxis,
            ),
          ]
        : []),
    ].join('\n'),
  );
  const md = `# kv sensitivity: prefill weight × KV capacity per worker, and reuse credit

Command: \`npm run bench:sweep${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}\`
Date: ${new Date().toISOString()}. Trace ${o.trace.split('/').pop()}, first ${trace.length} requests (upper bound ${(bound.tokenRate * 100).toFixed(1)}% of tokens);
${o.fleet.workers} workers, speed-up ${o.fleet.speedup}, other fleet settings as in the replay defaults. One fresh fleet per cell.

Prefill weight × capacity (reuseCredit ${base.reuseCredit}):

${markdownTable(header, grid.map(row))}

Reuse credit (prefillWeight ${base.prefillWeight}, ${o.fleet.kvBlocks} blocks per worker):

${markdownTable(header, line.map(row))}

How to read it: the hit rate is the steady signal (it depends on routing decisions, not on timing). The fleet runs close to
its prefill capacity, so mean TTFT moves with small differences in placement and with CPU stalls on the machine running the
replay: check the "late p99" and "sim lag" columns (how far the client and the simulated engines fell behind, real ms) before
trusting a TTFT difference between two cells.

![kv sensitivity](replay-sweep.svg)
`;
  mkdirSync(o.out, { recursive: true });
  writeFileSync(join(o.out, 'replay-sweep.md'), md);
  writeFileSync(
    join(o.out, 'replay-sweep.json'),
    `${JSON.stringify({ date: new Date().toISOString(), fleet: o.fleet, limit: trace.length, bound, cells }, null, 2)}\n`,
  );
  writeFileSync(join(o.out, 'replay-sweep.svg'), svg);
  process.stdout.write(md);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((err: unknown) => {
    process.stderr.write(`${(err as Error).message}\n`);
    process.exit((err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') ? 2 : 1);
  });
}
