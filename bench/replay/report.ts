import { cpus } from 'node:os';
import { markdownTable } from '../lib/child.js';
import type { FleetShape } from './run.js';
import { gatewayCpuMsPerRequest, type StrategySummary } from './summary.js';
import type { describeTrace, UpperBound } from './trace.js';

/** Everything one replay run produced; written as JSON and rendered as markdown and SVG. */
export interface ReplayReport {
  command: string;
  date: string;
  trace: string;
  traceShape: ReturnType<typeof describeTrace>;
  bound: UpperBound;
  fleet: FleetShape;
  params: Record<string, Record<string, unknown>>;
  wallS: number;
  summaries: StrategySummary[];
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const sec = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : 'n/a');

export function resultRows(summaries: readonly StrategySummary[]): (string | number)[][] {
  return summaries.map((s) => [
    s.strategy,
    sec(s.ttft.mean),
    sec(s.ttft.p50),
    sec(s.ttft.p90),
    sec(s.ttft.p99),
    sec(s.e2e.mean),
    Number.isFinite(s.outputTokPerS) ? s.outputTokPerS.toFixed(1) : 'n/a',
    s.failed,
    pct(s.hitRate),
    pct(s.ofUpperBound),
    (s.prefillTokens / 1e6).toFixed(1),
    s.prefillImbalance.toFixed(2),
    s.lateness.p99.toFixed(0),
    (s.simLostMs ?? 0).toFixed(0),
    Number.isFinite(gatewayCpuMsPerRequest(s)) ? gatewayCpuMsPerRequest(s).toFixed(2) : 'n/a',
  ]);
}

export const RESULT_HEADER = [
  'strategy',
  'TTFT mean s',
  'p50',
  'p90',
  'p99',
  'e2e mean s',
  'out tok/s',
  'failed',
  'hit rate',
  '% of bound',
  'prefill Mtok',
  'max/mean prefill',
  'late p99 ms',
  'sim lag ms',
  'gateway CPU ms/req',
];

/** The fleet's shape in the words every bench report uses, so results from different benches compare. */
export function describeFleet(f: FleetShape): string {
  const timing = Object.entries(f.timing)
    .map(([k, v]) => `--${k} ${v}`)
    .join(' ');
  return `${f.workers} simulated vLLM workers (\`kvgate sim\`), ${f.kvBlocks} KV blocks × ${f.blockSize} tokens each
(${((f.kvBlocks * f.blockSize) / 1e6).toFixed(2)}M tokens per worker), max-num-batched-tokens ${f.maxNumBatchedTokens}, max-num-seqs ${f.maxNumSeqs},
stream interval ${f.streamInterval ?? 1}, timing \`${timing}\`, speed-up ${f.speedup} (arrivals and engine steps both run ${f.speedup}× faster),
simulated by ${f.simProcesses ?? 1} process${(f.simProcesses ?? 1) === 1 ? '' : 'es'}.`;
}

export function renderMarkdown(r: ReplayReport, svgFile: string): string {
  const f = r.fleet;
  const t = r.traceShape;
  const rank = [...r.summaries].sort((a, b) => a.ttft.mean - b.ttft.mean).map((s) => s.strategy);
  return `# Trace replay: ${r.trace.split('/').pop()}

Command: \`${r.command}\`
Date: ${r.date}; machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, Node ${process.version}; wall time ${(r.wallS / 60).toFixed(1)} min.

Trace: ${t.requests} requests over ${t.durationS.toFixed(0)} s, mean input ${t.meanInput.toFixed(0)} tokens, mean output ${t.meanOutput.toFixed(0)}.
Upper bound (an infinite prefix cache shared by all workers): ${pct(r.bound.blockRate)} of blocks, ${pct(r.bound.tokenRate)} of tokens
(${r.bound.distinctBlocks} distinct of ${r.bound.blocks} block references). "% of bound" is the fleet's token hit rate over the token bound.

Fleet: ${describeFleet(f)}
Parameters: ${Object.keys(r.params).length ? `\`${JSON.stringify(r.params)}\`` : 'every strategy at its defaults'}.

Latencies are in simulated seconds (measured on the client, multiplied by the speed-up). "out tok/s" is the decode speed a user
sees, Σ(output tokens − 1) / Σ(e2e − TTFT) over requests. Hit rate and prefill tokens come from the workers' \`/sim/stats\`;
"max/mean prefill" is the busiest worker's prefill tokens over the mean. "late p99" is how far behind the trace's schedule
the client sent its requests (real ms) and "sim lag" the most any simulated engine fell behind its own clock (real ms, in all):
large values of either mean this machine could not keep up and part of the queueing is an artefact. "gateway CPU ms/req" is the
gateway process's user + system CPU time during the replay (from /proc, 10 ms ticks; start-up excluded) over the requests sent:
the cost of each strategy's routing decision (exact tokenization included) and of proxying, on a shared machine, so noisy.

${markdownTable(RESULT_HEADER, resultRows(r.summaries))}

Fastest mean TTFT first: ${rank.join(', ')}.

![TTFT distribution and hit rate per strategy](${svgFile})
`;
}
