import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { stringify } from 'yaml';
import { markdownTable, type ReadyChild } from './lib/child.js';
import { replay, type RequestResult } from './replay/client.js';
import { FLEET_DEFAULTS } from './replay/replay.js';
import { describeFleet } from './replay/report.js';
import { benchGatewayConfig, MODEL, simArgs, startBenchGateway } from './replay/run.js';
import { distribution } from './replay/summary.js';
import { TRACE_BLOCK_TOKENS, type TraceRequest } from './replay/trace.js';
import { spawnSimFleet } from './sim/spawn.js';
import type { SimWorkerInfo } from './sim/spawn.js';

/**
 * `bench:disagg --shift`: the traffic mix changes halfway (the second half's
 * prompts grow by `factor`, the growth uncached) and the same fleet runs twice:
 * once with a fixed prefill:decode split, once with the planner's advice
 * applied every `intervalS` by switching workers' roles (config rewrite +
 * SIGHUP, the way an operator's controller would act on the metric). TTFT and
 * ITL are reported for each half.
 */
export interface ShiftOptions {
  trace: readonly TraceRequest[];
  traceName: string;
  workers: number;
  prefill: number;
  speedup: number;
  gbps: number;
  bytesPerToken: number;
  factor: number;
  intervalS: number;
}

interface Change {
  simS: number;
  advice: string;
  split: string;
}

interface Half {
  ok: number;
  failed: number;
  ttft: ReturnType<typeof distribution>;
  itl: ReturnType<typeof distribution>;
}

/** The second half of the trace with prompts `factor`× longer; the added blocks are new ids, so they are never cached. */
export function shiftTrace(trace: readonly TraceRequest[], factor: number, maxModelLen: number): TraceRequest[] {
  const half = Math.floor(trace.length / 2);
  let fresh = 1_000_000_000;
  return trace.map((r, i) => {
    if (i < half) return r;
    const inputLength = Math.min(Math.round(r.inputLength * factor), maxModelLen - r.outputLength - 1);
    const hashIds = [...r.hashIds];
    while (hashIds.length * TRACE_BLOCK_TOKENS < inputLength) hashIds.push(fresh++);
    return { ...r, inputLength, hashIds };
  });
}

function roles(n: number, prefill: number): string[] {
  return Array.from({ length: n }, (_, i) => (i < prefill ? 'prefill' : 'decode'));
}

function writeConfig(file: string, sim: readonly SimWorkerInfo[], o: ShiftOptions, r: readonly string[]): void {
  const planner = {
    // The gateway measures real time; the targets are the simulated ones scaled down by the speed-up.
    targetTtftMs: 2000 / o.speedup,
    targetItlMs: 50 / o.speedup,
    windowSeconds: Math.max(2, 2 * o.intervalS),
  };
  const config = benchGatewayConfig(
    sim,
    FLEET_DEFAULTS.blockSize,
    { strategy: 'kv' },
    { disaggregation: { mode: 'always', planner } },
    (i) => ({ role: r[i] }),
  );
  writeFileSync(file, stringify(config));
}

/** Reads the planner's advice and, when it asks for another split of the same workers, applies it. */
async function applyAdvice(gateway: ReadyChild, n: number): Promise<{ prefill: number; advice: string } | undefined> {
  const res = await request(`${gateway.ready.adminUrl as string}/debug/planner`);
  const body = (await res.body.json()) as {
    pools: { basis: string; prefill: { recommended: number }; decode: { recommended: number } }[];
  };
  const pool = body.pools[0];
  if (!pool || pool.basis !== 'measured') return undefined;
  const p = pool.prefill.recommended;
  const d = pool.decode.recommended;
  // Keep the fleet's size (the simulated machines are what there is) and give each role its share, at least one.
  const prefill = Math.min(n - 1, Math.max(1, Math.round((n * p) / (p + d))));
  return { prefill, advice: `${p}:${d}` };
}

async function runOnce(
  o: ShiftOptions,
  trace: readonly TraceRequest[],
  adaptive: boolean,
): Promise<{ results: RequestResult[]; changes: Change[] }> {
  const fleet = { ...FLEET_DEFAULTS, workers: o.workers, speedup: o.speedup };
  const sim = await spawnSimFleet(
    o.workers,
    [...simArgs(fleet, true), '--kv-bytes-per-token', String(o.bytesPerToken), '--kv-transfer-gbps', String(o.gbps)],
    { timeoutMs: 120_000 },
  );
  const tmp = mkdtempSync(join(tmpdir(), 'kvgate-shift-'));
  const file = join(tmp, 'kvgate.yaml');
  let gateway: ReadyChild | undefined;
  const changes: Change[] = [];
  let stopLoop = false;
  try {
    let prefill = o.prefill;
    let lastDir = 0;
    writeConfig(file, sim.workers, o, roles(o.workers, prefill));
    gateway = await startBenchGateway(file);
    await new Promise((r) => setTimeout(r, 1000));
    const started = performance.now();
    const simS = () => ((performance.now() - started) / 1000) * o.speedup;
    const loop = (async () => {
      while (adaptive && !stopLoop) {
        await new Promise((r) => setTimeout(r, o.intervalS * 1000));
        if (stopLoop) break;
        const a = await applyAdvice(gateway, o.workers).catch(() => undefined);
        if (!a) continue;
        // As the Kubernetes example's HPA behaviour does: act only on advice that held for two readings in a
        // row, and move one worker per step, so one noisy window does not swing the whole fleet.
        const dir = Math.sign(a.prefill - prefill);
        const held = dir !== 0 && dir === lastDir;
        lastDir = dir;
        if (held) {
          prefill += dir;
          lastDir = 0;
          writeConfig(file, sim.workers, o, roles(o.workers, prefill));
          gateway.child.kill('SIGHUP');
        }
        changes.push({ simS: simS(), advice: a.advice, split: `${prefill}:${o.workers - prefill}` });
      }
    })();
    const label = adaptive ? 'planner-applied' : 'fixed';
    const results = await replay({
      url: gateway.ready.url as string,
      model: MODEL,
      trace,
      speedup: o.speedup,
      onProgress: (p) =>
        process.stderr.write(
          `[shift ${label}] ${p.done}/${p.total} done, ${p.inflight} in flight, ${p.failed} failed\n`,
        ),
    });
    stopLoop = true;
    await loop;
    return { results, changes };
  } finally {
    stopLoop = true;
    await Promise.all([gateway?.stop(), sim.stop()]);
    rmSync(tmp, { recursive: true, force: true });
  }
}

function halves(results: readonly RequestResult[], n: number, speedup: number): [Half, Half] {
  const half = Math.floor(n / 2);
  const sim = (ms: number) => (ms * speedup) / 1000;
  const one = (rs: readonly RequestResult[]): Half => {
    const ok = rs.filter((r) => r.ok);
    return {
      ok: ok.length,
      failed: rs.length - ok.length,
      ttft: distribution(ok.map((r) => sim(r.ttftMs))),
      itl: distribution(
        ok.filter((r) => r.outputTokens >= 2).map((r) => (sim(r.e2eMs - r.ttftMs) * 1000) / (r.outputTokens - 1)),
      ),
    };
  };
  return [one(results.filter((r) => r.index < half)), one(results.filter((r) => r.index >= half))];
}

export async function shiftBench(o: ShiftOptions): Promise<string> {
  const trace = shiftTrace(o.trace, o.factor, FLEET_DEFAULTS.maxModelLen);
  const half = Math.floor(trace.length / 2);
  const mean = (rs: readonly TraceRequest[]) => rs.reduce((a, r) => a + r.inputLength, 0) / rs.length;
  const fixed = await runOnce(o, trace, false);
  const adaptive = await runOnce(o, trace, true);
  const f = (x: number, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '–');
  const rows: (string | number)[][] = [];
  for (const [name, run] of [
    [`fixed ${o.prefill}:${o.workers - o.prefill}`, fixed],
    ['planner applied', adaptive],
  ] as const) {
    const [a, b] = halves(run.results, trace.length, o.speedup);
    for (const [which, h] of [
      ['before shift', a],
      ['after shift', b],
    ] as const)
      rows.push([
        name,
        which,
        `${h.ok} / ${h.failed}`,
        f(h.ttft.mean),
        f(h.ttft.p50),
        f(h.ttft.p90),
        f(h.itl.mean, 1),
        f(h.itl.p90, 1),
      ]);
  }
  const table = markdownTable(
    ['split', 'half', 'ok / failed', 'TTFT mean s', 'TTFT p50', 'TTFT p90', 'ITL mean ms', 'ITL p90 ms'],
    rows,
  );
  const timeline = adaptive.changes.map((c) => `${c.simS.toFixed(0)} s: advice ${c.advice} → split ${c.split}`);
  return `# Disaggregation under a shifting mix, planner advice applied (simulator)

Command: \`node dist/bench/disagg-bench.js ${process.argv.slice(2).join(' ')}\` — ${new Date().toISOString()}

Trace: first ${trace.length} requests of \`${o.traceName}\`; requests ${half}+ get prompts ${o.factor}× longer
(the added blocks are new, so uncached): mean input ${mean(trace.slice(0, half)).toFixed(0)} tokens before,
${mean(trace.slice(half)).toFixed(0)} after. Replayed open-loop at speed-up ${o.speedup}; every request disaggregated (\`mode: always\`).
Fleet: ${describeFleet({ ...FLEET_DEFAULTS, workers: o.workers, speedup: o.speedup })}
KV transfer ${o.gbps} Gbit/s at ${o.bytesPerToken} bytes/token. Both runs start at ${o.prefill}:${o.workers - o.prefill}.
"Planner applied": every ${o.intervalS} s (real; ${o.intervalS * o.speedup} s simulated) the bench reads \`/debug/planner\`,
splits the ${o.workers} workers in the advised prefill:decode ratio (at least one of each); when two readings in a row
ask to move the same way, it moves one worker's role that way (the stabilisation the Kubernetes example's HPA behaviour
gives) by rewriting the roles in the gateway's config and sending SIGHUP (the worker drains, then rejoins in its new role).
Planner targets: TTFT 2 s, ITL 50 ms (simulated), window ${Math.max(2, 2 * o.intervalS)} s real.
Times are simulated (real × speed-up). ITL = (e2e − TTFT) / (output tokens − 1) per request. "Before/after" split by request index.

${table}

Advice and applied split over the run (simulated time since the replay started):

${timeline.length ? timeline.map((l) => `- ${l}`).join('\n') : '- (no measured advice)'}
`;
}
