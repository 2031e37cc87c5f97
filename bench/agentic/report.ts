import { markdownTable } from '../lib/child.js';
import type { FleetCounters, Workload } from './workload.js';

/** The simulated fleet each arm gets (bench/agentic-bench.ts chooses it; the report says why). */
export interface Fleet {
  workersPerArm: number;
  gpuBlocks: number;
  cpuBlocks: number;
  blockSize: number;
  prefillMsPerToken: number;
  maxBatchedTokens: number;
}

export interface Row {
  name: 'off' | 'on';
  meaning: string;
  turns: number;
  mean: number;
  p50: number;
  p90: number;
  cachedShare: number;
  meanPostToolPrompt: number;
  meanFirstPrompt: number;
  hits: number;
  hitMean: number | undefined;
  counters: FleetCounters;
  prefillBusy: number;
  /** Post-tool prompt tokens: found on GPU, loaded back from the CPU tier (shares of post-tool prompt tokens). */
  gpuShare: number;
  cpuShare: number;
}

export function svg(rows: readonly Row[]): string {
  const max = Math.max(...rows.map((r) => r.p90)) * 1.1;
  const bars = rows.flatMap((r, i) =>
    (['mean', 'p50', 'p90'] as const).map((k, j) => {
      const h = (r[k] / max) * 200;
      const x = 60 + i * 200 + j * 55;
      return `<rect x="${x}" y="${240 - h}" width="45" height="${h}" fill="${i === 0 ? '#c44' : '#4a4'}"/><text x="${x + 22}" y="${235 - h}" font-size="11" text-anchor="middle">${r[k].toFixed(0)}</text><text x="${x + 22}" y="255" font-size="11" text-anchor="middle">${k}</text>`;
    }),
  );
  const labels = rows.map(
    (r, i) => `<text x="${140 + i * 200}" y="275" font-size="13" text-anchor="middle">retention ${r.name}</text>`,
  );
  return `<svg xmlns="http://www.w3.org/2000/svg" width="480" height="300"><text x="240" y="18" font-size="14" text-anchor="middle">post-tool-turn TTFT (ms)</text>${bars.join('')}${labels.join('')}</svg>\n`;
}

const pct = (x: number) => `${(100 * x).toFixed(0)}%`;

/** The results file: every workload and fleet parameter with the reason for its value, then the figures. */
export function markdown(o: {
  command: string;
  date: string;
  wallS: number;
  w: Workload;
  fleet: Fleet;
  rows: readonly Row[];
  prefetches: Record<string, number>;
}): string {
  const { w, fleet: f, rows } = o;
  const off = rows[0]!;
  const ratio = rows[0]!.mean / rows[1]!.mean;
  const gpuTokens = f.gpuBlocks * f.blockSize;
  const cpuTokens = f.cpuBlocks * f.blockSize;
  const meanContext = (w.contextMin + w.contextMax) / 2;
  const bgShare = w.backgroundRps * w.backgroundTokens * f.prefillMsPerToken;
  return `# Agentic replay: tool-call aware KV retention off vs on (simulator)

Command: \`${o.command}\` — ${o.date}, ${o.wallS.toFixed(0)} s wall.

Workload (identical in both arms: same seeds, same sessions, same tool delays, same background):
- ${w.sessions} concurrent agent sessions per arm (${w.sessions / f.workersPerArm} per worker), each slot running ${w.rounds} sessions back to back, ${w.turns} turns a
  session; all but the last turn end in a forced tool call. ${w.sessions / f.workersPerArm} per worker keeps the off arm below saturation:
  a post-tool turn that recomputes its whole prompt costs ~${((f.prefillMsPerToken * (w.contextMin + w.contextMax)) / 2 / 1000 + (f.prefillMsPerToken * w.toolResultTokens * (w.turns - 1)) / 2 / 1000).toFixed(1)} s of GPU, every ~5 s per session, on top of the background
  (a run with 4 per worker, in 3 synchronised rounds, saturated both arms: post-tool TTFT ~2.8 s in each, off/on
  0.94×: it measured a queue, not the cache).
- Session context at the first turn (system prompt + tool definitions + task): uniform ${w.contextMin}–${w.contextMax} tokens
  (mean ${meanContext}), the size agents carry; the Mooncake conversation trace (../shared/traces/mooncake, real multi-turn
  traffic) has a mean input of 12,035 tokens (p50 6,909, p90 27,367). Measured by the engine: first turns ${off.meanFirstPrompt.toFixed(0)}
  prompt tokens on average, post-tool turns ${off.meanPostToolPrompt.toFixed(0)}.
- Each tool result adds ${w.toolResultTokens} tokens (search hits, a file read), which every follow-up must prefill in both arms.
- Tool delay lognormal, median ${w.medianToolS} s, sigma ${w.sigma} (p90 ≈ ${(w.medianToolS * Math.exp(1.2816 * w.sigma)).toFixed(1)} s), capped at ${w.toolCapS} s.
- Background: ${w.backgroundRps} one-off ${w.backgroundTokens}-token prompts/s sent straight to every worker (the Azure code trace's mean
  input is 2,048 tokens), ${pct(bgShare / 1000)} of a worker's prefill time: other tenants competing for the same GPU and KV.

Fleet per arm: its own gateway and ${f.workersPerArm} simulated vLLM workers, each with
- GPU KV ${f.gpuBlocks} blocks × ${f.blockSize} = ${gpuTokens} tokens: ${(gpuTokens / meanContext).toFixed(1)} mean session contexts, as the 2.5k-context run had
  (320 blocks); enough to run one session's longest prompt beside the background, too small to keep ${w.sessions / f.workersPerArm}
  sessions' prefixes through their tool calls.
- CPU tier (OffloadingConnector) ${f.cpuBlocks} blocks = ${cpuTokens} tokens, ${(f.cpuBlocks / f.gpuBlocks).toFixed(0)}× GPU: host pools are configured
  in tens of GB a replica (llm-d's tiered-prefix-cache guide: 100 GB for a 4-GPU replica; the vLLM production-stack and
  Dynamo LMCache examples: 20 GB), 0.4–2× the ~50 GB of KV an 8B model has on one 80 GB GPU; the default 2× is the generous
  end, the one that favours the off arm. (A tier 5× GPU, the 2.5k-context run's ratio, would hold
  ~${((5 * gpuTokens) / (w.backgroundRps * w.backgroundTokens)).toFixed(0)} s of the background's tokens, beyond the tool delays' p95 of ${(w.medianToolS * Math.exp(1.645 * w.sigma)).toFixed(1)} s: almost no pressure.)
- Prefill ${f.prefillMsPerToken} ms/token (~${(1 / f.prefillMsPerToken).toFixed(0)}k tokens/s: an 8B-class model on one GPU), chunked at ${f.maxBatchedTokens} tokens a step;
  CPU-tier load-back at 25 GB/s PCIe (~${((meanContext / f.blockSize) * 0.073).toFixed(0)} ms for a mean context).

Where the off arm (no pin, no prefetch: the pressure as it is) found its post-tool prompt tokens: ${pct(off.gpuShare)} still on GPU,
${pct(off.cpuShare)} loaded back from the CPU tier, ${pct(Math.max(0, 1 - off.gpuShare - off.cpuShare))} recomputed (gone from both tiers, or routed to a worker without them).

${markdownTable(
  [
    'retention',
    'what it does',
    'post-tool turns',
    'TTFT mean ms',
    'p50 ms',
    'p90 ms',
    'cached share',
    'fleet prefill tokens',
    'CPU-tier loaded tokens',
    'sim lag ms',
    'prefill busy',
  ],
  rows.map((r) => [
    r.name,
    r.meaning,
    r.turns,
    r.mean.toFixed(0),
    r.p50.toFixed(0),
    r.p90.toFixed(0),
    pct(r.cachedShare),
    r.counters.prefillTokensComputed,
    r.counters.cpuLoadTokens,
    r.counters.lostMs,
    pct(r.prefillBusy),
  ]),
)}

Cached share: prompt tokens of post-tool turns the engine already held (GPU, or CPU tier loaded back), as usage reports them.
Fleet prefill tokens include the background (the same in both arms). CPU-tier loaded tokens include the "on" arm's
warm-ups. Sim lag: milliseconds the simulated engines fell behind their own clock because this machine was busy
(0 = the timing is the model's, not the machine's). Prefill busy: prefill tokens × ${f.prefillMsPerToken} ms over the arm's worker time
(launch overheads and decode steps not counted). Preemptions (a running sequence out of GPU blocks, recomputed
later): ${rows.map((r) => `${r.name} ${r.counters.preemptions}`).join(', ')}.
${rows.map((r) => `${r.name}: ${r.hits} of ${r.turns} post-tool turns found ≥ 80% of their prompt cached${r.hitMean === undefined ? '' : `, their mean TTFT ${r.hitMean.toFixed(0)} ms`}.`).join('\n')}
Prefetch warm-ups of the "on" gateway by outcome: ${JSON.stringify(o.prefetches)}.

Post-tool-turn mean TTFT, off / on: ${ratio.toFixed(2)}×.
`;
}
