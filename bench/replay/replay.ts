import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { jsonObjectFlag, parseBenchFlags, sharedTrace, UsageError } from '../lib/flags.js';
import type { Progress } from './client.js';
import { renderMarkdown, type ReplayReport } from './report.js';
import { runStrategy, type FleetShape } from './run.js';
import { gatewayCpuMsPerRequest, summarise, type StrategySummary } from './summary.js';
import { replaySvg } from './svg.js';
import { describeTrace, readTrace, upperBound } from './trace.js';

const HELP = `Replays a Mooncake-format trace through the gateway, once per strategy, each on a fresh simulated
fleet; writes bench/results/replay-<name>.{md,json,svg}.
Usage: npm run bench:replay -- [flags]   (--params is a JSON object of strategy parameters)
The trace defaults to ../shared/traces/mooncake/conversation_trace.jsonl from the repository root.`;

/**
 * Replays a Mooncake-format trace through the gateway, once per strategy, each
 * on a fresh simulated fleet, and writes bench/results/replay-<trace>.{md,json,svg}.
 *
 *   npm run bench:replay -- [--trace FILE] [--limit N] [--strategies a,b] [--speedup X] ...
 */
export const ALL_STRATEGIES = [
  'random',
  'round-robin',
  'least-load',
  'power-of-two',
  'approx-prefix',
  'kv',
  'dynamo',
  'sglang-cache-aware',
  'llmd-precise',
];
/** The shared Mooncake trace, found beside the repository (`../shared/traces/` from its root). */
export const DEFAULT_TRACE = sharedTrace('mooncake/conversation_trace.jsonl');

/**
 * Fleet defaults (the README explains them).
 * Timing: each worker stands for a big model on a multi-GPU node (~5.5k prompt
 * tokens/s of prefill, 20-40 ms decode steps, 2048-token chunked prefill), so
 * the trace's steady ~41k prompt tokens/s keep 8 workers ~85% busy when
 * nothing is cached (round-robin) and ~60% at the best hit rate: the regime
 * where routing decides queueing, as in the Mooncake paper. The simulator's
 * own defaults (Qwen3-0.6B) leave this fleet ~6% busy and routing barely shows.
 * KV: 163,840 blocks × 16 = 2.6M tokens per worker, 21M in all, against 94M
 * distinct prompt tokens and reuse within minutes (median 135 s, p90 530 s):
 * keeping each conversation on one worker could reach ~94% of the bound,
 * while round-robin, which spreads every conversation over all workers, ~30%.
 * Speed-up 25: the whole trace replays in ~2.5 min per strategy (9 strategies
 * in ~25 min). The machine keeps up at ~1.2 of its 2 cores: workers stream 16
 * tokens per SSE chunk (vLLM's --stream-interval; the first token still goes
 * alone, so TTFT is unchanged) and the report's "late" and "sim lag" columns
 * show whether the client or any simulated engine fell behind its clock.
 */
export const FLEET_DEFAULTS: FleetShape = {
  workers: 8,
  kvBlocks: 163_840,
  blockSize: 16,
  maxModelLen: 131_072,
  maxNumBatchedTokens: 2048,
  maxNumSeqs: 256,
  speedup: 25,
  streamInterval: 16,
  simProcesses: 1,
  timing: { 'prefill-a': 3.4e-6, 'prefill-b': 0.15, 'prefill-c': 30, 'decode-base-ms': 20, 'decode-kv-ms': 20 },
};

const TIMING_FLAGS = ['prefill-a', 'prefill-b', 'prefill-c', 'decode-base-ms', 'decode-kv-ms'] as const;

function num(values: Record<string, unknown>, name: string, fallback: number, min = 0, integer = false): number {
  const raw = values[name];
  if (raw === undefined) return fallback;
  const v = Number(raw);
  if (!Number.isFinite(v) || v < min || (integer && !Number.isInteger(v)))
    throw new UsageError(`--${name} must be ${integer ? 'an integer' : 'a number'} >= ${min}, got ${String(raw)}`);
  return v;
}

export function parseReplayFlags(argv: string[]): {
  trace: string;
  limit: number;
  strategies: string[];
  fleet: FleetShape;
  params: Record<string, Record<string, unknown>>;
  out: string;
  name: string;
} {
  const { values } = parseBenchFlags(HELP, {
    args: argv,
    options: {
      trace: { type: 'string' },
      limit: { type: 'string' },
      strategies: { type: 'string' },
      speedup: { type: 'string' },
      workers: { type: 'string' },
      'kv-blocks': { type: 'string' },
      'block-size': { type: 'string' },
      'max-model-len': { type: 'string' },
      'max-num-batched-tokens': { type: 'string' },
      'max-num-seqs': { type: 'string' },
      'stream-interval': { type: 'string' },
      'sim-processes': { type: 'string' },
      ...Object.fromEntries(TIMING_FLAGS.map((f) => [f, { type: 'string' as const }])),
      params: { type: 'string' },
      out: { type: 'string' },
      name: { type: 'string' },
    },
    strict: true,
  });
  const trace = values.trace ?? DEFAULT_TRACE;
  if (!existsSync(trace)) throw new UsageError(`--trace ${trace}: no such file`);
  const strategies = (values.strategies ?? ALL_STRATEGIES.join(','))
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (strategies.length === 0) throw new UsageError('--strategies must name at least one strategy');
  const params = jsonObjectFlag('params', values.params, '{"kv":{"prefillWeight":2}}') as Record<
    string,
    Record<string, unknown>
  >;
  const d = FLEET_DEFAULTS;
  const timing: FleetShape['timing'] = {};
  for (const f of TIMING_FLAGS) timing[f] = num(values, f, d.timing[f] ?? NaN);
  const fleet: FleetShape = {
    workers: num(values, 'workers', d.workers, 1, true),
    kvBlocks: num(values, 'kv-blocks', d.kvBlocks, 1, true),
    blockSize: num(values, 'block-size', d.blockSize, 1, true),
    maxModelLen: num(values, 'max-model-len', d.maxModelLen, 1, true),
    maxNumBatchedTokens: num(values, 'max-num-batched-tokens', d.maxNumBatchedTokens, 1, true),
    maxNumSeqs: num(values, 'max-num-seqs', d.maxNumSeqs, 1, true),
    speedup: num(values, 'speedup', d.speedup, 0.001),
    streamInterval: num(values, 'stream-interval', d.streamInterval ?? 1, 1, true),
    simProcesses: num(values, 'sim-processes', d.simProcesses ?? 1, 1, true),
    timing,
  };
  const limit = num(values, 'limit', Infinity, 1, values.limit !== undefined);
  const name =
    values.name ??
    basename(trace)
      .replace(/\.jsonl?$/, '')
      .replace(/_trace$/, '');
  return {
    trace,
    limit,
    strategies,
    fleet,
    params,
    out: values.out ?? fileURLToPath(new URL('../../../bench/results', import.meta.url)),
    name,
  };
}

export function progressLine(label: string, p: Progress): string {
  const s = (ms: number) => `${Math.round(ms / 1000)}s`;
  const eta = p.done > 0 && p.done < p.total ? ` ETA ${s((p.elapsedMs / p.done) * (p.total - p.done))}` : '';
  return `[${label}] ${p.done}/${p.total} done, ${p.rate.toFixed(1)} req/s, ${p.inflight} in flight, ${p.failed} failed, late ${p.lateMs.toFixed(0)} ms, elapsed ${s(p.elapsedMs)}${eta}\n`;
}

/** Per-request results of the last strategy run, dumped for diagnosis when KVGATE_REPLAY_DUMP names a file. */
let lastResults: unknown[] = [];

async function main(argv: string[]): Promise<void> {
  const o = parseReplayFlags(argv);
  const trace = readTrace(o.trace, o.limit);
  const bound = upperBound(trace, o.fleet.blockSize);
  const shape = describeTrace(trace);
  process.stderr.write(
    `trace ${o.trace}: ${trace.length} requests over ${shape.durationS.toFixed(0)} s (replayed in ~${(shape.durationS / o.fleet.speedup).toFixed(0)} s per strategy); upper bound ${(bound.blockRate * 100).toFixed(1)}% of blocks, ${(bound.tokenRate * 100).toFixed(1)}% of tokens\n`,
  );
  if (shape.maxTotal > o.fleet.kvBlocks * o.fleet.blockSize)
    throw new UsageError(
      `the longest request needs ${shape.maxTotal} tokens of KV cache; raise --kv-blocks above ${Math.ceil(shape.maxTotal / o.fleet.blockSize)}`,
    );
  const started = Date.now();
  const summaries: StrategySummary[] = [];
  for (const [i, strategy] of o.strategies.entries()) {
    const label = `${i + 1}/${o.strategies.length} ${strategy}`;
    const run = await runStrategy(
      strategy,
      fleetAwareParams(strategy, o.params[strategy], o.fleet),
      trace,
      o.fleet,
      (p) => process.stderr.write(progressLine(label, p)),
    );
    lastResults = run.results;
    const s = summarise(strategy, run.results, run.workers, bound, o.fleet.speedup);
    summaries.push(s);
    const firstError = run.results.find((r) => !r.ok)?.error;
    s.cpuS = run.cpuS;
    s.gatewayCounters = run.gatewayCounters;
    s.wallS = run.wallMs / 1000;
    process.stderr.write(
      `[${label}] cpu s: client ${run.cpuS.client.toFixed(0)}, sim ${run.cpuS.sim.toFixed(0)}, gateway ${run.cpuS.gateway.toFixed(0)} (${gatewayCpuMsPerRequest(s).toFixed(2)} ms per request while replaying)\n`,
    );
    process.stderr.write(
      `[${label}] gateway: ${Object.entries(run.gatewayCounters)
        .map(([k, v]) => `${k.replace(/^kvgate_/, '')} ${Math.round(v)}`)
        .join(', ')}\n`,
    );
    process.stderr.write(
      `[${label}] TTFT mean ${s.ttft.mean.toFixed(2)} s, hit ${(s.hitRate * 100).toFixed(1)}% (${(s.ofUpperBound * 100).toFixed(0)}% of bound), imbalance ${s.prefillImbalance.toFixed(2)}, failed ${s.failed}${firstError ? ` (${firstError})` : ''}, late p99 ${s.lateness.p99.toFixed(0)} ms, ${(run.wallMs / 1000).toFixed(0)} s\n`,
    );
  }
  const report: ReplayReport = {
    command: `npm run bench:replay${argv.length ? ` -- ${argv.join(' ')}` : ''}`,
    date: new Date().toISOString(),
    trace: o.trace,
    traceShape: shape,
    bound,
    fleet: o.fleet,
    params: o.params,
    wallS: (Date.now() - started) / 1000,
    summaries,
  };
  mkdirSync(o.out, { recursive: true });
  const base = join(o.out, `replay-${o.name}${o.limit < Infinity ? `-limit${o.limit}` : ''}`);
  writeFileSync(`${base}.json`, `${JSON.stringify(report, null, 2)}\n`);
  if (process.env.KVGATE_REPLAY_DUMP) writeFileSync(process.env.KVGATE_REPLAY_DUMP, JSON.stringify(lastResults));
  writeFileSync(`${base}.svg`, replaySvg(report));
  const md = renderMarkdown(report, basename(`${base}.svg`));
  writeFileSync(`${base}.md`, md);
  process.stdout.write(md);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`bench:replay: ${(err as Error).message}\n`);
      process.exit(2);
    }
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}

/**
 * Gives the baselines what their upstream reads from the engine: llm-d's scorer the
 * absolute KV usage (capacity = the simulated `kvBlocks`), Dynamo's router queue the
 * engines' max-num-batched-tokens. Explicit `--params` win.
 */
export function fleetAwareParams(
  strategy: string,
  params: Record<string, unknown> | undefined,
  fleet: FleetShape,
): Record<string, unknown> {
  if (strategy === 'llmd-precise') return { kvCapacityBlocks: fleet.kvBlocks, ...params };
  if (strategy === 'dynamo') return { maxNumBatchedTokens: fleet.maxNumBatchedTokens, ...params };
  return params ?? {};
}
