import { request } from 'undici';
import { MODEL } from '../replay/run.js';
import type { SimWorkerInfo } from '../sim/spawn.js';

/** The agentic replay's workload knobs (bench/agentic-bench.ts flags). */
export interface Workload {
  sessions: number;
  rounds: number;
  turns: number;
  /** Each session's context at its first turn (system prompt + tool definitions + task), drawn uniformly. */
  contextMin: number;
  contextMax: number;
  /** Tokens of each tool result appended to the conversation. */
  toolResultTokens: number;
  medianToolS: number;
  sigma: number;
  /** Tool delays are capped: a lognormal's far tail would otherwise hold a whole round for minutes. */
  toolCapS: number;
  backgroundRps: number;
  backgroundTokens: number;
  seed: number;
}

/** What one arm's post-tool turns saw. */
export interface ArmTurns {
  ttfts: number[];
  /** Post-tool turns: prompt tokens, and those the engine had cached (GPU, or CPU tier loaded back). */
  prompt: number;
  cached: number;
  /** First turns: prompt tokens (the drawn contexts as the model's tokenizer counts them). */
  firstPrompt: number;
  firstTurns: number;
  /** Post-tool turns that found at least 80% of their prompt cached: TTFTs. */
  hitTtfts: number[];
}

export const TOOLS = [
  { type: 'function', function: { name: 'search', parameters: { type: 'object', properties: {} } } },
];

export function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) + 0.5) / 2 ** 32;
}

/**
 * Common English words that the Qwen3 tokenizer encodes as one token each (with their leading space), so
 * n words are ~n prompt tokens; the report gives the counts the engine measured, not this estimate.
 */
const WORDS = (
  ' the of and to in is for that with on as by at from this be are or an it not file data value result function' +
  ' return user request system tool call search query page time list name type error test code line model server' +
  ' cache token block string number table field index state event node path key text output input step task plan'
).split(/(?= )/);

/** `n` pseudo-random words: text no other session shares past its first block, as distinct agents' contexts. */
export function words(n: number, random: () => number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += WORDS[Math.floor(random() * WORDS.length)];
  return s;
}

interface ToolCall {
  id: string;
  type: string;
  function: { name: string; arguments: string };
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

/**
 * One agent session: a context drawn from [contextMin, contextMax], `turns` turns, each but the last ending
 * in a forced tool call answered after a lognormal delay with a `toolResultTokens` result. Everything
 * random comes from the session id and the seed, so both arms replay exactly the same sessions.
 */
export async function session(
  url: string,
  arm: ArmTurns,
  id: number,
  w: Workload,
  progress: () => void,
): Promise<void> {
  const delays = rng(w.seed * 1000 + id);
  const text = rng(w.seed * 7919 + id * 31 + 17);
  const context = Math.round(w.contextMin + text() * (w.contextMax - w.contextMin));
  const messages: Record<string, unknown>[] = [
    { role: 'system', content: `Agent ${id}.${words(context, text)}` },
    { role: 'user', content: `Task ${id}: research and answer.` },
  ];
  for (let k = 0; k < w.turns; k++) {
    const last = k === w.turns - 1;
    const body = { model: MODEL, messages, tools: TOOLS, max_tokens: 8 };
    const r = await turn(
      url,
      last ? body : { ...body, tool_choice: { type: 'function', function: { name: 'search' } } },
    );
    if (k === 0) {
      arm.firstPrompt += r.prompt;
      arm.firstTurns++;
    } else {
      arm.ttfts.push(r.ttft);
      arm.prompt += r.prompt;
      arm.cached += r.cached;
      if (r.cached >= 0.8 * r.prompt) arm.hitTtfts.push(r.ttft);
    }
    progress();
    if (last || !r.call) break;
    // Box-Muller: a lognormal tool delay, heavy-tailed.
    const z = Math.sqrt(-2 * Math.log(delays())) * Math.cos(2 * Math.PI * delays());
    const delay = Math.min(w.toolCapS * 1000, w.medianToolS * 1000 * Math.exp(w.sigma * z));
    await new Promise((r) => setTimeout(r, delay));
    messages.push(
      { role: 'assistant', content: null, tool_calls: [r.call] },
      { role: 'tool', tool_call_id: r.call.id, content: `Result ${k}:${words(w.toolResultTokens, text)}` },
    );
  }
}

/** One-off prompts (token ids: no tokenizing cost) straight to a worker at `rps`, until stopped. */
export function background(
  worker: SimWorkerInfo,
  w: Workload,
  stop: { done: boolean },
  random: () => number,
): Promise<void> {
  const pending: Promise<unknown>[] = [];
  return (async () => {
    while (!stop.done) {
      const prompt = Array.from({ length: w.backgroundTokens }, () => 1000 + Math.floor(random() * 50_000));
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
      await new Promise((r) => setTimeout(r, 1000 / w.backgroundRps));
    }
    await Promise.all(pending);
  })();
}

/** Sim counters an arm's report needs, summed over its workers. */
export interface FleetCounters {
  prefillTokensComputed: number;
  prefixHitTokens: number;
  cpuLoadTokens: number;
  preemptions: number;
  lostMs: number;
}

export async function fleetCounters(workers: readonly SimWorkerInfo[]): Promise<FleetCounters> {
  const sum: FleetCounters = {
    prefillTokensComputed: 0,
    prefixHitTokens: 0,
    cpuLoadTokens: 0,
    preemptions: 0,
    lostMs: 0,
  };
  for (const w of workers) {
    const s = (await (await request(`${w.url}/sim/stats`)).body.json()) as Partial<FleetCounters>;
    for (const k of Object.keys(sum) as (keyof FleetCounters)[]) sum[k] += s[k] ?? 0;
  }
  return sum;
}

export function diff(a: FleetCounters, b: FleetCounters): FleetCounters {
  const d = { ...b };
  for (const k of Object.keys(d) as (keyof FleetCounters)[]) d[k] -= a[k];
  return d;
}
