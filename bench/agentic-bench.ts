import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { stringify } from 'yaml';
import { markdownTable } from './lib/child.js';
import { parseBenchFlags } from './lib/flags.js';
import { benchGatewayConfig, MODEL, startBenchGateway } from './replay/run.js';
import { spawnSimFleet, type SimWorkerInfo } from './sim/spawn.js';

const USAGE = `usage: node dist/bench/agentic-bench.js [flags]   (npm run bench:agentic)

Agentic replay: multi-turn chat sessions whose turns end in tool calls (tool_choice forces one), with
lognormal tool delays, on simulated vLLM workers with a CPU KV tier (OffloadingConnector) under GPU and
host-memory pressure from one-off background prompts. Two gateways run side by side in one run, each in
front of its own 2 workers:
  off  kv routing only: no session affinity, no pin, no prefetch (the index still credits CPU-tier blocks:
       that is the index being correct about what the engine holds, not retention)
  on   toolRetention: follow-ups steered to the holder, the LMCache-style pin, and the warm-up prefetch
       (--prefetch false leaves the prefetch out of "on", to see what it adds)
Reports TTFT of post-tool turns (mean/p50/p90), their cached-token share and fleet prefill tokens per
mode, writes bench/results/agentic.json, agentic.md and agentic.svg (agentic-no-prefetch.* with --prefetch false). Tool delays are capped at 20 s;
--background-rps is per worker.
`;

const MEANING = {
  off: 'kv routing only: no affinity, no pin, no prefetch (CPU-tier blocks still credited by the index)',
  on: 'affinity to the holder + LMCache-style pin + warm-up prefetch',
  'on-no-prefetch': 'affinity to the holder + LMCache-style pin (no prefetch)',
};

const SIM_ARGS = ['--kv-events', 'tcp://127.0.0.1:*', '--kv-blocks', '320', '--cpu-kv-blocks', '1600'];
const SIM_TIMING = ['--prefill-b', '0.05', '--max-num-batched-tokens', '4096'];
/** The "on" arm's prefetch settings (`toolRetention.prefetch`). */
const PREFETCH = {};
const TOOLS = [{ type: 'function', function: { name: 'search', parameters: { type: 'object', properties: {} } } }];

function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) + 0.5) / 2 ** 32;
}

interface ToolCall {
  id: string;
  type: string;
  function: { name: string; arguments: string };
}

interface Mode {
  name: 'off' | 'on';
  url: string;
  admin: string;
  workers: readonly SimWorkerInfo[];
  ttfts: number[];
  /** Post-tool turns: prompt tokens, and those the engine had cached (GPU or CPU tier). */
  prompt: number;
  cached: number;
  /** Post-tool turns that found at least 80% of their prompt cached: TTFTs. */
  hitTtfts: number[];
}

/** Streams one chat turn; resolves with TTFT (first SSE chunk) and the tool call, if any. */
async function turn(
  url: string,
  body: Record<string, unknown>,
): Promise<{ ttft: number; call?: ToolCall; prompt: number; cached: number }> {
  const t0 = performance.now();
  const res = await request(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  if (res.statusCode !== 200) throw new Error(`${res.statusCode}: ${await res.body.text()}`);
  let ttft = -1;
  let text = '';
  for await (const chunk of res.body) {
    if (ttft < 0) ttft = performance.now() - t0;
    text += (chunk as Buffer).toString();
  }
  const m = /"tool_calls":\[(\{.*?\}\})\]/.exec(text);
  const prompt = Number(/"prompt_tokens":(\d+)/.exec(text)?.[1] ?? 0);
  const cached = Number(/"cached_tokens":(\d+)/.exec(text)?.[1] ?? 0);
  return { ttft, prompt, cached, ...(m ? { call: JSON.parse(m[1]!) as ToolCall } : {}) };
}

const doc = (tag: string) => Array.from({ length: 300 }, (_, i) => `item ${i} of ${tag}.`).join(' ');
const pct = (v: number[], q: number) => [...v].sort((a, b) => a - b)[Math.min(v.length - 1, Math.floor(q * v.length))]!;
const mean = (v: number[]) => v.reduce((a, b) => a + b, 0) / v.length;

async function session(mode: Mode, id: number, o: Opts, random: () => number, progress: () => void): Promise<void> {
  const messages: Record<string, unknown>[] = [
    { role: 'system', content: doc(`${mode.name}-${id}`) },
    { role: 'user', content: `Task ${id}: research and answer.` },
  ];
  for (let k = 0; k < o.turns; k++) {
    const last = k === o.turns - 1;
    const body = { model: MODEL, messages, tools: TOOLS, max_tokens: 8 };
    const r = await turn(
      mode.url,
      last ? body : { ...body, tool_choice: { type: 'function', function: { name: 'search' } } },
    );
    if (k > 0) {
      mode.ttfts.push(r.ttft);
      mode.prompt += r.prompt;
      mode.cached += r.cached;
      if (r.cached >= 0.8 * r.prompt) mode.hitTtfts.push(r.ttft);
    }
    progress();
    if (last || !r.call) break;
    // Box-Muller: a lognormal tool delay, heavy-tailed.
    const z = Math.sqrt(-2 * Math.log(random())) * Math.cos(2 * Math.PI * random());
    const delay = Math.min(20_000, o.medianToolS * 1000 * Math.exp(o.sigma * z));
    await new Promise((r) => setTimeout(r, delay));
    messages.push(
      { role: 'assistant', content: null, tool_calls: [r.call] },
      { role: 'tool', tool_call_id: r.call.id, content: `result ${k} of the search for task ${id}` },
    );
  }
}

/** One-off long prompts (token ids: no tokenizing cost) straight to a worker, until stopped. */
function background(worker: SimWorkerInfo, rps: number, stop: { done: boolean }, random: () => number): Promise<void> {
  const pending: Promise<unknown>[] = [];
  return (async () => {
    while (!stop.done) {
      const prompt = Array.from({ length: 2000 }, () => 1000 + Math.floor(random() * 50_000));
      pending.push(
        request(`${worker.url}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: MODEL, prompt, max_tokens: 1 }),
        }).then(
          (r) => r.body.dump(),
          () => undefined,
        ),
      );
      await new Promise((r) => setTimeout(r, 1000 / rps));
    }
    await Promise.all(pending);
  })();
}

interface Opts {
  sessions: number;
  rounds: number;
  turns: number;
  medianToolS: number;
  sigma: number;
  backgroundRps: number;
  seed: number;
  prefetch: boolean;
}

async function prefillTokens(workers: readonly SimWorkerInfo[]): Promise<number> {
  let n = 0;
  for (const w of workers)
    n += ((await (await request(`${w.url}/sim/stats`)).body.json()) as { prefillTokensComputed: number })
      .prefillTokensComputed;
  return n;
}

function svg(rows: { name: string; mean: number; p50: number; p90: number }[]): string {
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

async function main(): Promise<void> {
  const { values: f } = parseBenchFlags(USAGE, {
    options: {
      sessions: { type: 'string', default: '8' },
      rounds: { type: 'string', default: '3' },
      turns: { type: 'string', default: '4' },
      'median-tool-s': { type: 'string', default: '2' },
      sigma: { type: 'string', default: '1' },
      'background-rps': { type: 'string', default: '5' },
      seed: { type: 'string', default: '1' },
      prefetch: { type: 'string', default: 'true' },
    },
  });
  const o: Opts = {
    sessions: Number(f.sessions),
    rounds: Number(f.rounds),
    turns: Number(f.turns),
    medianToolS: Number(f['median-tool-s']),
    sigma: Number(f.sigma),
    backgroundRps: Number(f['background-rps']),
    seed: Number(f.seed),
    prefetch: f.prefetch !== 'false',
  };
  const started = performance.now();
  const sim = await spawnSimFleet(4, ['--port', '0', ...SIM_ARGS, ...SIM_TIMING], { timeoutMs: 120_000 });
  const tmp = mkdtempSync(join(tmpdir(), 'kvgate-agentic-'));
  const gateways: Awaited<ReturnType<typeof startBenchGateway>>[] = [];
  const stop = { done: false };
  try {
    const modes: Mode[] = [];
    for (const [i, name] of (['off', 'on'] as const).entries()) {
      const workers = sim.workers.slice(i * 2, i * 2 + 2);
      const extra =
        name === 'on'
          ? { toolRetention: { enabled: true, engine: 'lmcache', prefetch: { enabled: o.prefetch, ...PREFETCH } } }
          : {};
      const file = join(tmp, `${name}.yaml`);
      writeFileSync(file, stringify(benchGatewayConfig(workers, 16, { strategy: 'kv' }, extra)));
      const g = await startBenchGateway(file);
      gateways.push(g);
      modes.push({
        name,
        url: g.ready.url as string,
        admin: g.ready.adminUrl as string,
        workers,
        ttfts: [],
        prompt: 0,
        cached: 0,
        hitTtfts: [],
      });
    }
    await new Promise((r) => setTimeout(r, 1000));
    const before = await Promise.all(modes.map((m) => prefillTokens(m.workers)));
    const bg = sim.workers.map((w, i) => background(w, o.backgroundRps, stop, rng(o.seed * 100 + i)));
    let done = 0;
    const total = 2 * o.rounds * o.sessions * o.turns;
    const progress = () => {
      done++;
      if (done % 8 === 0 || done === total) process.stderr.write(`\r${done}/${total} turns`);
    };
    // Rounds of concurrent sessions, one after the other, each with its own documents: more post-tool turns at
    // the same load. The gateway keeps what it learned of tool delays, as a running one would.
    for (let round = 0; round < o.rounds; round++)
      await Promise.all(
        modes.flatMap((m) =>
          Array.from({ length: o.sessions }, (_, s) => {
            const id = round * o.sessions + s;
            return session(m, id, o, rng(o.seed * 1000 + id), progress);
          }),
        ),
      );
    process.stderr.write('\n');
    stop.done = true;
    await Promise.all(bg);
    const after = await Promise.all(modes.map((m) => prefillTokens(m.workers)));
    const rows = modes.map((m, i) => ({
      name: m.name,
      turns: m.ttfts.length,
      mean: mean(m.ttfts),
      p50: pct(m.ttfts, 0.5),
      p90: pct(m.ttfts, 0.9),
      prefillTokens: after[i]! - before[i]!,
      cachedShare: m.cached / Math.max(1, m.prompt),
      hits: m.hitTtfts.length,
      hitMean: m.hitTtfts.length ? mean(m.hitTtfts) : undefined,
      meaning: MEANING[m.name === 'on' && !o.prefetch ? 'on-no-prefetch' : m.name],
    }));
    const onTools = (await (await request(`${modes[1]!.admin}/debug/tools`)).body.json()) as {
      prefetch?: { outcomes?: Record<string, number> };
    };
    const prefetches = onTools.prefetch?.outcomes ?? {};
    const command = `node dist/bench/agentic-bench.js ${process.argv.slice(2).join(' ')}`.trim();
    const result = {
      command,
      date: new Date().toISOString(),
      options: o,
      wallS: (performance.now() - started) / 1000,
      rows,
      prefetch: { ...PREFETCH, enabled: o.prefetch, outcomes: prefetches },
    };
    const ratio = rows[0]!.mean / rows[1]!.mean;
    const md = `# Agentic replay: tool-call aware KV retention off vs on (simulator)

Command: \`${command}\` — ${result.date}, ${result.wallS.toFixed(0)} s wall.

${o.rounds} rounds of ${o.sessions} concurrent sessions per mode × ${o.turns} turns (all but the last end in a forced tool call), lognormal tool delay
(median ${o.medianToolS} s, sigma ${o.sigma}, cap 20 s), ~2.5k-token session contexts. Each mode has its own gateway and 2 simulated
workers (GPU 320 blocks, CPU tier 1600 blocks, prefill 0.05 ms/token); ${o.backgroundRps} one-off 2k-token prompts/s go straight to
every worker, so a waiting session's prefix leaves GPU and then host memory. Prefill tokens include the background traffic (same in both modes).

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
  ],
  rows.map((r) => [
    r.name,
    r.meaning,
    r.turns,
    r.mean.toFixed(0),
    r.p50.toFixed(0),
    r.p90.toFixed(0),
    `${(100 * r.cachedShare).toFixed(0)}%`,
    r.prefillTokens,
  ]),
)}

Cached share: prompt tokens of post-tool turns the engine already held (GPU, or CPU tier loaded back), as usage reports them.
${rows.map((r) => `${r.name}: ${r.hits} of ${r.turns} post-tool turns found ≥ 80% of their prompt cached${r.hitMean === undefined ? '' : `, their mean TTFT ${r.hitMean.toFixed(0)} ms`}.`).join('\n')}
Prefetch warm-ups of the "on" gateway by outcome: ${JSON.stringify(prefetches)}.

Post-tool-turn mean TTFT, off / on: ${ratio.toFixed(2)}×.
`;
    const out = fileURLToPath(new URL('../../bench/results', import.meta.url));
    mkdirSync(out, { recursive: true });
    // A run without the prefetch is a comparison, not the result: it keeps agentic.* as the default run wrote it.
    const stem = o.prefetch ? 'agentic' : 'agentic-no-prefetch';
    writeFileSync(join(out, `${stem}.json`), JSON.stringify({ ...result, meanTtftRatio: ratio }, null, 2) + '\n');
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
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
