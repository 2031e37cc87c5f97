import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { stringify } from 'yaml';
import { markdownTable, type ReadyChild } from './lib/child.js';
import { replay, type RequestResult } from './replay/client.js';
import { DEFAULT_TRACE, FLEET_DEFAULTS } from './replay/replay.js';
import { describeFleet } from './replay/report.js';
import { benchGatewayConfig, MODEL, simArgs, startBenchGateway } from './replay/run.js';
import { distribution } from './replay/summary.js';
import { describeTrace, readTrace, type TraceRequest } from './replay/trace.js';
import { spawnSimFleet } from './sim/spawn.js';
import { shiftBench } from './disagg-shift.js';

import { parseBenchFlags } from './lib/flags.js';

/**
 * Replays a prefix of the Mooncake conversation trace through the gateway on
 * the same number of simulated workers in several shapes: all aggregated with
 * `kv` routing, a fixed P/D split (every request disaggregated), and
 * conditional disaggregation at one or more thresholds. Writes bench/results/disagg.md.
 *
 *   node dist/bench/disagg-bench.js [--limit 1000] [--workers 8] [--prefill 3] [--speedup 25] [--thresholds 1024,4096]
 *
 * With `--shift`, the shifting-mix run instead (bench/disagg-shift.ts), written to bench/results/disagg-shift.md.
 */
const HELP = `Usage: node dist/bench/disagg-bench.js [options]   (npm run bench:disagg -- [options])

Replays the Mooncake conversation trace on simulated workers: aggregated, fixed P/D split, conditional
disaggregation. Writes bench/results/disagg.md.
The trace defaults to ../shared/traces/mooncake/conversation_trace.jsonl from the repository root.
  --trace FILE         JSONL trace (default: ${DEFAULT_TRACE})
  --limit N            first N requests (default 1000)
  --workers N          simulated workers (default 8)
  --prefill N          prefill workers of the P/D split (default 3)
  --speedup X          simulator and replay speed-up (default 25)
  --thresholds A,B     conditional minUncachedTokens values (default 1024,4096)
  --gbps X             KV transfer bandwidth, Gbit/s (default 100)
  --out DIR            results directory (default bench/results)
  --help               this text

Shifting mix (--shift): the second half's prompts grow --factor times; runs a fixed split and one where the
planner's advice is applied every --interval seconds (roles switched by config reload). Writes
bench/results/disagg-shift.md.
  --shift
  --factor X           prompt growth in the second half (default 2)
  --interval S         real seconds between applying the advice (default 2)
`;
/** An 8B-class model's KV per token in bf16 (32 layers × 8 KV heads × 128 × 2 (K,V) × 2 bytes), the size of model the replay timing stands for. */
const BYTES_PER_TOKEN = 131_072;

interface Shape {
  name: string;
  roles: string[];
  disaggregation: Record<string, unknown>;
}

interface Row {
  shape: string;
  ok: number;
  failed: number;
  ttft: ReturnType<typeof distribution>;
  itl: ReturnType<typeof distribution>;
  /** Output tokens per simulated second, whole fleet and per worker. */
  tokPerS: number;
  tokPerSPerWorker: number;
  paths: Record<string, number>;
  hitRate: number;
  kvLoadTokens: number;
  /** The planner's advice at the end of the run (P/D shapes only): recommended prefill:decode workers. */
  advice: string;
}

async function runShape(shape: Shape, trace: readonly TraceRequest[], gbps: number): Promise<Row> {
  const fleet = { ...FLEET_DEFAULTS, workers: shape.roles.length, speedup: speedup };
  const sim = await spawnSimFleet(
    fleet.workers,
    [
      ...simArgs(fleet, true),
      '--role',
      shape.roles.join(','),
      '--kv-bytes-per-token',
      String(BYTES_PER_TOKEN),
      '--kv-transfer-gbps',
      String(gbps),
    ],
    { timeoutMs: 60_000 },
  );
  const tmp = mkdtempSync(join(tmpdir(), 'kvgate-disagg-'));
  let gateway: ReadyChild | undefined;
  try {
    const config = join(tmp, 'kvgate.yaml');
    writeFileSync(
      config,
      stringify(
        benchGatewayConfig(
          sim.workers,
          fleet.blockSize,
          { strategy: 'kv' },
          { disaggregation: shape.disaggregation },
          (i) => ({ role: shape.roles[i] }),
        ),
      ),
    );
    gateway = await startBenchGateway(config);
    await new Promise((r) => setTimeout(r, 1000));
    const started = performance.now();
    const results = await replay({
      url: gateway.ready.url as string,
      model: MODEL,
      trace,
      speedup: fleet.speedup,
      onProgress: (p) =>
        process.stderr.write(
          `[${shape.name}] ${p.done}/${p.total} done, ${p.inflight} in flight, ${p.failed} failed\n`,
        ),
    });
    const wallS = ((performance.now() - started) / 1000) * fleet.speedup;
    const metrics = await (await request(`${gateway.ready.url as string}/metrics`)).body.text();
    const planner = (await (await request(`${gateway.ready.adminUrl as string}/debug/planner`)).body.json()) as {
      pools: { prefill: { recommended: number }; decode: { recommended: number } }[];
    };
    const advice = planner.pools[0]
      ? `${planner.pools[0].prefill.recommended}:${planner.pools[0].decode.recommended}`
      : '–';
    const paths: Record<string, number> = {};
    for (const m of metrics.matchAll(/^kvgate_disagg_requests_total\{path="(\w+)"\} (\d+)/gm))
      paths[m[1]!] = Number(m[2]);
    let hits = 0,
      queries = 0,
      loaded = 0;
    for (const w of sim.workers) {
      const s = (await (await request(`${w.url}/sim/stats`)).body.json()) as Record<string, number>;
      hits += s.prefixHitTokens!;
      queries += s.prefixQueryTokens!;
      loaded += s.kvLoadTokens!;
      process.stderr.write(
        `[${shape.name}] ${w.worker} (${shape.roles[sim.workers.indexOf(w)]}): prefill computed ${s.prefillTokensComputed}, loaded ${s.kvLoadTokens} (failures ${s.kvLoadFailures}), preemptions ${s.preemptions}, steps ${s.steps}, generated ${s.generatedTokens}\n`,
      );
    }
    return { ...summarise(shape, results, wallS, paths, queries ? (hits + loaded) / queries : 0, loaded), advice };
  } finally {
    await Promise.all([gateway?.stop(), sim.stop()]);
    rmSync(tmp, { recursive: true, force: true });
  }
}

function summarise(
  shape: Shape,
  results: readonly RequestResult[],
  wallS: number,
  paths: Record<string, number>,
  hitRate: number,
  kvLoadTokens: number,
): Omit<Row, 'advice'> {
  const ok = results.filter((r) => r.ok);
  const sim = (ms: number) => (ms * speedup) / 1000;
  const itls = ok
    .filter((r) => r.outputTokens >= 2)
    .map((r) => (sim(r.e2eMs - r.ttftMs) * 1000) / (r.outputTokens - 1));
  const tokens = ok.reduce((a, r) => a + r.outputTokens, 0);
  return {
    shape: shape.name,
    ok: ok.length,
    failed: results.length - ok.length,
    ttft: distribution(ok.map((r) => sim(r.ttftMs))),
    itl: distribution(itls),
    tokPerS: tokens / wallS,
    tokPerSPerWorker: tokens / wallS / shape.roles.length,
    paths,
    hitRate,
    kvLoadTokens,
  };
}

let speedup = 25;

async function main(): Promise<void> {
  const { values } = parseBenchFlags(HELP, {
    options: {
      trace: { type: 'string' },
      limit: { type: 'string' },
      workers: { type: 'string' },
      prefill: { type: 'string' },
      speedup: { type: 'string' },
      thresholds: { type: 'string' },
      gbps: { type: 'string' },
      out: { type: 'string' },
      shift: { type: 'boolean' },
      factor: { type: 'string' },
      interval: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const limit = Number(values.limit ?? 1000);
  const workers = Number(values.workers ?? 8);
  const prefill = Number(values.prefill ?? 3);
  speedup = Number(values.speedup ?? 25);
  const gbps = Number(values.gbps ?? 100);
  const thresholds = (values.thresholds ?? '1024,4096').split(',').map(Number);
  const trace = readTrace(values.trace ?? DEFAULT_TRACE, limit);
  const out = values.out ?? fileURLToPath(new URL('../../bench/results', import.meta.url));
  if (values.shift) {
    const md = await shiftBench({
      trace,
      traceName: values.trace ?? DEFAULT_TRACE,
      workers,
      prefill,
      speedup,
      gbps,
      bytesPerToken: BYTES_PER_TOKEN,
      factor: Number(values.factor ?? 2),
      intervalS: Number(values.interval ?? 2),
    });
    mkdirSync(out, { recursive: true });
    writeFileSync(join(out, 'disagg-shift.md'), md);
    process.stdout.write(md);
    return;
  }
  const shapeOf = describeTrace(trace);
  const pd = [...Array<string>(prefill).fill('prefill'), ...Array<string>(workers - prefill).fill('decode')];
  const shapes: Shape[] = [
    { name: `aggregated ×${workers} (kv)`, roles: Array<string>(workers).fill('both'), disaggregation: {} },
    { name: `P/D ${prefill}:${workers - prefill}, always`, roles: pd, disaggregation: { mode: 'always' } },
    ...thresholds.map((th) => ({
      name: `P/D ${prefill}:${workers - prefill}, conditional ≥${th}`,
      roles: pd,
      disaggregation: { mode: 'conditional', minUncachedTokens: th },
    })),
  ];
  const rows: Row[] = [];
  for (const s of shapes) rows.push(await runShape(s, trace, gbps));
  const f = (x: number, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '–');
  const table = markdownTable(
    [
      'shape',
      'ok / failed',
      'TTFT mean s',
      'TTFT p50',
      'TTFT p90',
      'TTFT p99',
      'ITL mean ms',
      'ITL p90 ms',
      'output tok/s',
      'tok/s per worker',
      'paths (disagg / agg / fallback)',
      'prefix hit (incl. transferred)',
      'planner P:D',
    ],
    rows.map((r) => [
      r.shape,
      `${r.ok} / ${r.failed}`,
      f(r.ttft.mean),
      f(r.ttft.p50),
      f(r.ttft.p90),
      f(r.ttft.p99),
      f(r.itl.mean, 1),
      f(r.itl.p90, 1),
      f(r.tokPerS, 0),
      f(r.tokPerSPerWorker, 0),
      `${r.paths.disaggregated ?? 0} / ${r.paths.aggregated ?? 0} / ${r.paths.prefill_fallback ?? 0}`,
      `${f(r.hitRate * 100, 1)}%`,
      r.advice,
    ]),
  );
  const md = `# Disaggregation benchmark (simulator)

Command: \`node dist/bench/disagg-bench.js ${process.argv.slice(2).join(' ')}\` — ${new Date().toISOString()}

Trace: first ${trace.length} requests of \`${values.trace ?? DEFAULT_TRACE}\` (${shapeOf.durationS.toFixed(0)} s of arrivals,
mean input ${shapeOf.meanInput.toFixed(0)} tokens, mean output ${shapeOf.meanOutput.toFixed(0)}), replayed open-loop at speed-up ${speedup}.
Fleet per shape (the replay tool's defaults): ${describeFleet({ ...FLEET_DEFAULTS, workers, speedup })}
KV transfer between prefill and decode workers ${gbps} Gbit/s at ${BYTES_PER_TOKEN} bytes/token.
Times are simulated (real × speed-up). ITL = (e2e − TTFT) / (output tokens − 1) per request.
Throughput = output tokens / simulated wall time of the replay (arrival-bound: the same trace for every shape).

${table}

${process.env.DISAGG_NOTES ?? ''}
`;
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'disagg.md'), md);
  process.stdout.write(md);
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
