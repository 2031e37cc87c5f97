import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { markdownTable } from '../lib/child.js';
import { parseReplayFlags, progressLine } from './replay.js';
import { runStrategy } from './run.js';
import { summarise } from './summary.js';
import { linePanel, svgDocument } from './svg.js';
import { readTrace, upperBound } from './trace.js';

/**
 * Sensitivity of `kv` to its prefill weight and to the KV capacity per worker:
 * one replay per grid point (fresh fleet each), a prefix of the trace.
 *
 *   node dist/bench/replay/sweep.js [--prefill-weights 1,4,16] [--kv-blocks-grid 65536,163840,327680] [--limit 1500] [replay flags]
 * Writes bench/results/replay-sweep.{md,json,svg}.
 */
function takeList(argv: string[], flag: string, fallback: number[]): number[] {
  const i = argv.indexOf(flag);
  if (i < 0) return fallback;
  const raw = argv.splice(i, 2)[1] ?? '';
  const values = raw.split(',').map(Number);
  if (values.length === 0 || values.some((v) => !Number.isFinite(v) || v <= 0)) {
    process.stderr.write(`sweep: ${flag} must be a comma-separated list of positive numbers, got ${raw}\n`);
    process.exit(2);
  }
  return values;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const weights = takeList(argv, '--prefill-weights', [1, 4, 16]);
  const capacities = takeList(argv, '--kv-blocks-grid', [65_536, 163_840, 327_680]);
  if (!argv.includes('--limit')) argv.push('--limit', '1500');
  const o = parseReplayFlags(argv);
  const trace = readTrace(o.trace, o.limit);
  const bound = upperBound(trace, o.fleet.blockSize);
  const cells: { prefillWeight: number; kvBlocks: number; ttftMean: number; ttftP90: number; hitRate: number; ofUpperBound: number; imbalance: number; failed: number; lateP99: number }[] = [];
  let n = 0;
  for (const kvBlocks of capacities) {
    for (const prefillWeight of weights) {
      const label = `${++n}/${weights.length * capacities.length} kv pw=${prefillWeight} blocks=${kvBlocks}`;
      const params = { ...(o.params.kv ?? {}), prefillWeight };
      const run = await runStrategy('kv', params, trace, { ...o.fleet, kvBlocks }, (p) => process.stderr.write(progressLine(label, p)));
      const s = summarise('kv', run.results, run.workers, bound, o.fleet.speedup);
      cells.push({ prefillWeight, kvBlocks, ttftMean: s.ttft.mean, ttftP90: s.ttft.p90, hitRate: s.hitRate, ofUpperBound: s.ofUpperBound, imbalance: s.prefillImbalance, failed: s.failed, lateP99: s.lateness.p99 });
      process.stderr.write(`[${label}] TTFT mean ${s.ttft.mean.toFixed(2)} s, hit ${(s.hitRate * 100).toFixed(1)}% (${(s.ofUpperBound * 100).toFixed(0)}% of bound)\n`);
    }
  }
  const rows = cells.map((c) => [c.kvBlocks, `${((c.kvBlocks * o.fleet.blockSize) / 1e6).toFixed(2)}M`, c.prefillWeight, c.ttftMean.toFixed(2), c.ttftP90.toFixed(2), `${(c.hitRate * 100).toFixed(1)}%`, `${(c.ofUpperBound * 100).toFixed(1)}%`, c.imbalance.toFixed(2), c.failed, c.lateP99.toFixed(0)]);
  const table = markdownTable(['KV blocks/worker', 'tokens/worker', 'prefillWeight', 'TTFT mean s', 'TTFT p90 s', 'hit rate', '% of bound', 'max/mean prefill', 'failed', 'late p99 ms'], rows);
  const lines = (value: (c: (typeof cells)[number]) => number) => capacities.map((kb) => ({
    name: `${kb} blocks/worker`, points: cells.filter((c) => c.kvBlocks === kb).map((c) => [c.prefillWeight, value(c)] as const),
  }));
  const svg = svgDocument(900, 420, [
    linePanel(lines((c) => c.ttftMean), weights, 60, 50, 260, 280, 'kv: mean TTFT (simulated s)', 'prefillWeight', (v) => v.toFixed(1)),
    linePanel(lines((c) => c.hitRate), weights, 480, 50, 240, 280, 'kv: prefix hit rate (tokens)', 'prefillWeight', (v) => `${(v * 100).toFixed(0)}%`),
  ].join('\n'));
  const md = `# kv sensitivity: prefill weight × KV capacity per worker

Command: \`node dist/bench/replay/sweep.js ${process.argv.slice(2).join(' ')}\`
Date: ${new Date().toISOString()}. Trace ${o.trace.split('/').pop()}, first ${trace.length} requests (upper bound ${(bound.tokenRate * 100).toFixed(1)}% of tokens);
${o.fleet.workers} workers, speed-up ${o.fleet.speedup}, other fleet settings as in the replay defaults. One fresh fleet per cell.

${table}

How to read it: the hit rate is the steady signal (it depends on routing decisions, not on timing). The fleet runs close to
its prefill capacity, so mean TTFT swings with any CPU stall on the machine running the replay: compare the "late p99"
column (how far behind schedule the client sent, real ms) before trusting a TTFT difference between two cells.

![kv sensitivity](replay-sweep.svg)
`;
  mkdirSync(o.out, { recursive: true });
  writeFileSync(join(o.out, 'replay-sweep.md'), md);
  writeFileSync(join(o.out, 'replay-sweep.json'), `${JSON.stringify({ date: new Date().toISOString(), fleet: o.fleet, limit: trace.length, bound, cells }, null, 2)}\n`);
  writeFileSync(join(o.out, 'replay-sweep.svg'), svg);
  process.stdout.write(md);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main().catch((err: unknown) => {
    process.stderr.write(`${(err as Error).message}\n`);
    process.exit((err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') ? 2 : 1);
  });
}
