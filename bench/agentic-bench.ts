import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { stringify } from 'yaml';
import { markdown, svg, type Fleet, type Row } from './agentic/report.js';
import {
  background,
  diff,
  fleetCounters,
  rng,
  session,
  type ArmTurns,
  type FleetCounters,
  type Workload,
} from './agentic/workload.js';
import { parseBenchFlags, UsageError } from './lib/flags.js';
import { benchGatewayConfig, startBenchGateway } from './replay/run.js';
import { spawnSimFleet, type SimWorkerInfo } from './sim/spawn.js';

const USAGE = `usage: node dist/bench/agentic-bench.js [flags]   (npm run bench:agentic)

Agentic replay: multi-turn agent sessions with agent-sized contexts (default 8k-16k tokens; the Mooncake
conversation trace's mean input is ~12k) whose turns end in tool calls (tool_choice forces one), with
lognormal tool delays, on simulated vLLM workers with a CPU KV tier (OffloadingConnector) under GPU and
host-memory pressure from one-off background prompts. Two gateways run side by side in one run, each in
front of its own 2 workers, replaying the same sessions:
  off  kv routing only: no session affinity, no pin, no prefetch (the index still credits CPU-tier blocks:
       that is the index being correct about what the engine holds, not retention)
  on   toolRetention: follow-ups steered to the holder, the LMCache-style pin, and the warm-up prefetch
       (--prefetch false leaves the prefetch out of "on", to see what it adds)
Reports TTFT of post-tool turns (mean/p50/p90), their cached-token share, where the off arm found its
prefixes (GPU, CPU tier, recomputed) and fleet prefill tokens per arm; writes bench/results/agentic.json,
agentic.md and agentic.svg (agentic-no-prefetch.* with --prefetch false).
  --sessions / --rounds            concurrent sessions per arm / sessions each of them runs back to back
  --context-tokens MIN-MAX (or N)  each session's context at its first turn, drawn uniformly
  --gpu-blocks / --cpu-blocks      per worker; "auto": GPU = 2 mean contexts, CPU tier = 2x GPU
  --background-rps                 per worker
`;

const MEANING = {
  off: 'kv routing only: no affinity, no pin, no prefetch (CPU-tier blocks still credited by the index)',
  on: 'affinity to the holder + LMCache-style pin + warm-up prefetch',
  'on-no-prefetch': 'affinity to the holder + LMCache-style pin (no prefetch)',
};

const BLOCK_SIZE = 16;
const WORKERS_PER_ARM = 2;
/** ~20k prefill tokens/s, an 8B-class model on one GPU; vLLM's chunked-prefill budget for latency-minded serving. */
const PREFILL_MS_PER_TOKEN = 0.05;
const MAX_BATCHED_TOKENS = 4096;
/** The "on" arm's prefetch settings (`toolRetention.prefetch`): the defaults. */
const PREFETCH = {};

const pct = (v: number[], q: number) => [...v].sort((a, b) => a - b)[Math.min(v.length - 1, Math.floor(q * v.length))]!;
const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;

function positive(name: string, raw: string, integer = true): number {
  const n = Number(raw);
  if (!(n > 0) || (integer && !Number.isInteger(n)))
    throw new UsageError(`--${name} must be a positive number, got ${raw}`);
  return n;
}

function contextRange(raw: string): [number, number] {
  const m = /^(\d+)(?:-(\d+))?$/.exec(raw.trim());
  const lo = Number(m?.[1]);
  const hi = Number(m?.[2] ?? m?.[1]);
  if (!m || !(lo > 0) || hi < lo) throw new UsageError(`--context-tokens must be N or MIN-MAX tokens, got ${raw}`);
  return [lo, hi];
}

function parse(): { w: Workload; fleet: Fleet; prefetch: boolean } {
  const { values: f } = parseBenchFlags(USAGE, {
    options: {
      sessions: { type: 'string', default: '4' },
      rounds: { type: 'string', default: '6' },
      turns: { type: 'string', default: '4' },
      'context-tokens': { type: 'string', default: '8000-16000' },
      'tool-result-tokens': { type: 'string', default: '1000' },
      'median-tool-s': { type: 'string', default: '2' },
      sigma: { type: 'string', default: '1' },
      'tool-cap-s': { type: 'string', default: '20' },
      'background-rps': { type: 'string', default: '5' },
      'background-tokens': { type: 'string', default: '2048' },
      'gpu-blocks': { type: 'string', default: 'auto' },
      'cpu-blocks': { type: 'string', default: 'auto' },
      seed: { type: 'string', default: '1' },
      prefetch: { type: 'string', default: 'true' },
    },
  });
  const [contextMin, contextMax] = contextRange(f['context-tokens']);
  const w: Workload = {
    sessions: positive('sessions', f.sessions),
    rounds: positive('rounds', f.rounds),
    turns: positive('turns', f.turns),
    contextMin,
    contextMax,
    toolResultTokens: Number(f['tool-result-tokens']),
    medianToolS: positive('median-tool-s', f['median-tool-s'], false),
    sigma: Number(f.sigma),
    toolCapS: positive('tool-cap-s', f['tool-cap-s'], false),
    backgroundRps: positive('background-rps', f['background-rps'], false),
    backgroundTokens: positive('background-tokens', f['background-tokens']),
    seed: Number(f.seed),
  };
  if (!(w.toolResultTokens >= 0) || !(w.sigma >= 0))
    throw new UsageError('--tool-result-tokens and --sigma must be >= 0');
  // GPU: two mean contexts per worker (rounded up to 256 blocks), the ratio the 2.5k-context run had (320 blocks);
  // CPU tier 2× GPU, the generous end of the host pools operators configure (bench/agentic/report.ts says which).
  const gpuBlocks =
    f['gpu-blocks'] === 'auto'
      ? Math.ceil((contextMin + contextMax) / BLOCK_SIZE / 256) * 256
      : positive('gpu-blocks', f['gpu-blocks']);
  const cpuBlocks = f['cpu-blocks'] === 'auto' ? 2 * gpuBlocks : positive('cpu-blocks', f['cpu-blocks']);
  const fleet: Fleet = {
    workersPerArm: WORKERS_PER_ARM,
    gpuBlocks,
    cpuBlocks,
    blockSize: BLOCK_SIZE,
    prefillMsPerToken: PREFILL_MS_PER_TOKEN,
    maxBatchedTokens: MAX_BATCHED_TOKENS,
  };
  return { w, fleet, prefetch: f.prefetch !== 'false' };
}

interface Arm extends ArmTurns {
  name: 'off' | 'on';
  url: string;
  admin: string;
  workers: readonly SimWorkerInfo[];
}

async function main(): Promise<void> {
  const { w, fleet, prefetch } = parse();
  const started = performance.now();
  const simArgs = [
    ...['--port', '0', '--kv-events', 'tcp://127.0.0.1:*', '--block-size', String(BLOCK_SIZE)],
    ...['--kv-blocks', String(fleet.gpuBlocks), '--cpu-kv-blocks', String(fleet.cpuBlocks)],
    ...['--prefill-b', String(PREFILL_MS_PER_TOKEN), '--max-num-batched-tokens', String(MAX_BATCHED_TOKENS)],
  ];
  const sim = await spawnSimFleet(2 * WORKERS_PER_ARM, simArgs, { timeoutMs: 120_000 });
  const tmp = mkdtempSync(join(tmpdir(), 'kvgate-agentic-'));
  const gateways: Awaited<ReturnType<typeof startBenchGateway>>[] = [];
  const stop = { done: false };
  try {
    const arms: Arm[] = [];
    for (const [i, name] of (['off', 'on'] as const).entries()) {
      const workers = sim.workers.slice(i * WORKERS_PER_ARM, (i + 1) * WORKERS_PER_ARM);
      const extra =
        name === 'on'
          ? { toolRetention: { enabled: true, engine: 'lmcache', prefetch: { enabled: prefetch, ...PREFETCH } } }
          : {};
      const file = join(tmp, `${name}.yaml`);
      writeFileSync(file, stringify(benchGatewayConfig(workers, BLOCK_SIZE, { strategy: 'kv' }, extra)));
      const g = await startBenchGateway(file);
      gateways.push(g);
      const turns: ArmTurns = { ttfts: [], prompt: 0, cached: 0, firstPrompt: 0, firstTurns: 0, hitTtfts: [] };
      arms.push({ name, url: g.ready.url as string, admin: g.ready.adminUrl as string, workers, ...turns });
    }
    await new Promise((r) => setTimeout(r, 1000));
    const before = await Promise.all(arms.map((a) => fleetCounters(a.workers)));
    // Each arm's workers get the same background streams (worker k of either arm: the same seed).
    const bg = sim.workers.map((wk, i) => background(wk, w, stop, rng(w.seed * 100 + (i % WORKERS_PER_ARM))));
    let done = 0;
    const total = 2 * w.rounds * w.sessions * w.turns;
    const progress = () => {
      done++;
      if (done % 8 === 0 || done === total) process.stderr.write(`\r${done}/${total} turns`);
    };
    // `sessions` concurrent slots per arm, each running `rounds` sessions back to back, each session with its own
    // context: a steady agent population (no synchronised round starts, no wait for a round's slowest session).
    // The gateway keeps what it learned of tool delays, as a running one would.
    const spanStart = performance.now();
    await Promise.all(
      arms.flatMap((a) =>
        Array.from({ length: w.sessions }, async (_, s) => {
          for (let round = 0; round < w.rounds; round++) await session(a.url, a, round * w.sessions + s, w, progress);
        }),
      ),
    );
    process.stderr.write('\n');
    stop.done = true;
    await Promise.all(bg);
    const after = await Promise.all(arms.map((a) => fleetCounters(a.workers)));
    const spanMs = performance.now() - spanStart;
    const rows: Row[] = arms.map((a, i) => {
      const counters: FleetCounters = diff(before[i]!, after[i]!);
      return {
        name: a.name,
        meaning: MEANING[a.name === 'on' && !prefetch ? 'on-no-prefetch' : a.name],
        turns: a.ttfts.length,
        mean: mean(a.ttfts),
        p50: pct(a.ttfts, 0.5),
        p90: pct(a.ttfts, 0.9),
        cachedShare: a.cached / Math.max(1, a.prompt),
        meanPostToolPrompt: a.prompt / Math.max(1, a.ttfts.length),
        meanFirstPrompt: a.firstPrompt / Math.max(1, a.firstTurns),
        hits: a.hitTtfts.length,
        hitMean: a.hitTtfts.length ? mean(a.hitTtfts) : undefined,
        counters,
        // Prefill work (linear term) as a share of the arm's worker time: how loaded the arm was.
        prefillBusy: (counters.prefillTokensComputed * PREFILL_MS_PER_TOKEN) / (spanMs * WORKERS_PER_ARM),
        // Only post-tool turns can hit: first turns and background prompts are unique.
        gpuShare: counters.prefixHitTokens / Math.max(1, a.prompt),
        cpuShare: counters.cpuLoadTokens / Math.max(1, a.prompt),
      };
    });
    const onTools = (await (await request(`${arms[1]!.admin}/debug/tools`)).body.json()) as {
      prefetch?: { outcomes?: Record<string, number> };
    };
    const prefetches = onTools.prefetch?.outcomes ?? {};
    const command = `node dist/bench/agentic-bench.js ${process.argv.slice(2).join(' ')}`.trim();
    const date = new Date().toISOString();
    const wallS = (performance.now() - started) / 1000;
    const ratio = rows[0]!.mean / rows[1]!.mean;
    const result = {
      command,
      date,
      options: { ...w, prefetch },
      fleet,
      wallS,
      rows,
      prefetch: { ...PREFETCH, enabled: prefetch, outcomes: prefetches },
      meanTtftRatio: ratio,
    };
    const md = markdown({ command, date, wallS, w, fleet, rows, prefetches });
    const out = fileURLToPath(new URL('../../bench/results', import.meta.url));
    mkdirSync(out, { recursive: true });
    // A run without the prefetch is a comparison, not the result: it keeps agentic.* as the default run wrote it.
    const stem = prefetch ? 'agentic' : 'agentic-no-prefetch';
    writeFileSync(join(out, `${stem}.json`), JSON.stringify(result, null, 2) + '\n');
    writeFileSync(join(out, `${stem}.md`), md);
    writeFileSync(join(out, `${stem}.svg`), svg(rows));
    process.stdout.write(md);
  } finally {
    stop.done = true;
    await Promise.all([...gateways.map((g) => g.stop()), sim.stop()]);
    rmSync(tmp, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  if (err instanceof UsageError) {
    process.stderr.write(`${err.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
