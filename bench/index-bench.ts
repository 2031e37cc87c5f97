import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import xxhash from 'xxhash-wasm';
import { createBlockHasher, type BlockHasher } from '../indexer/index/block-hash.js';
import type { KvEvent, KvEventBatch } from '../indexer/events/types.js';
import { KvIndexer } from '../indexer/index/kv-indexer.js';
import { RadixIndex } from '../indexer/index/radix-index.js';
import { fmt, report, type RunResult } from './index-bench-report.js';

import { parseBenchFlags, sharedTrace } from './lib/flags.js';
const HELP = `Index benchmark: replays the Mooncake conversation trace as KV events into the indexer and
measures insert rate, match latency and memory; writes bench/results/index-bench.md.
Usage: node --expose-gc dist/bench/index-bench.js [flags]
The trace defaults to ../shared/traces/mooncake/conversation_trace.jsonl from the repository root.`;

/**
 * Index benchmark (not a test): replays the Mooncake conversation trace as KV
 * events into a KvIndexer for N workers, then matches every request.
 *
 *   node --expose-gc dist/bench/index-bench.js [--trace PATH] [--workers 8,64]
 *     [--block-size 16] [--worker-blocks 65536] [--limit N] [--out DIR]
 *
 * Each trace `hash_id` is a 512-token chunk (chained, as in the trace); its
 * tokens come from a PRNG seeded by the id, so equal ids give equal tokens.
 * Requests go to a worker by the hash of their second chunk (the first after
 * the shared system prompt), so a conversation's turns land together. Every
 * worker is an LRU cache of chunks holding `--worker-blocks` gateway blocks:
 * missing chunks become one `stored` event per contiguous run (the last chunk
 * cut to input_length, full blocks only), evicted chunks a `removed` event.
 */
const { values } = parseBenchFlags(HELP, {
  options: {
    trace: { type: 'string' },
    workers: { type: 'string', default: '8,64' },
    'block-size': { type: 'string', default: '16' },
    'worker-blocks': { type: 'string', default: '65536' },
    limit: { type: 'string' },
    out: { type: 'string', default: fileURLToPath(new URL('../../bench/results', import.meta.url)) },
  },
});
const tracePath = values.trace ?? sharedTrace('mooncake/conversation_trace.jsonl');
const workerCounts = values.workers.split(',').map(Number);
const BS = Number(values['block-size']);
const WORKER_BLOCKS = Number(values['worker-blocks']);
const CHUNK = 512;
if (CHUNK % BS !== 0 || workerCounts.some((n) => !(n > 0))) throw new Error('bad --block-size or --workers');
const PER_CHUNK = CHUNK / BS;
const MODEL = 'bench/model';

interface Request {
  input_length: number;
  hash_ids: number[];
}
const lines = readFileSync(tracePath, 'utf8')
  .split('\n')
  .filter((l) => l.trim() !== '');
const requests: Request[] = lines
  .slice(0, values.limit ? Number(values.limit) : undefined)
  .map((l) => JSON.parse(l) as Request);

/** Gateway blocks of chunk `k` of a request: 512/BS, the last cut to input_length. */
function blocksOfChunk(r: Request, k: number): number {
  if (k < r.hash_ids.length - 1) return PER_CHUNK;
  return Math.min(PER_CHUNK, Math.floor((r.input_length - CHUNK * k) / BS));
}

/** Deterministic tokens of a chunk (mulberry32 seeded by the hash id). */
const chunkTokens = new Uint32Array(CHUNK);
function fillChunk(hashId: number): Uint32Array {
  let s = (hashId * 2654435761) ^ 0x5eed;
  for (let i = 0; i < CHUNK; i++) {
    s = (s + 0x6d2b79f5) | 0;
    let x = Math.imul(s ^ (s >>> 15), 1 | s);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    chunkTokens[i] = ((x ^ (x >>> 14)) >>> 0) % 151_643;
  }
  return chunkTokens;
}
const engineHash = (hashId: number, j: number) =>
  BigInt.asUintN(64, BigInt(hashId * PER_CHUNK + j + 1) * 0x9e3779b97f4a7c15n);

function assign(r: Request, workers: number): number {
  const key = r.hash_ids[Math.min(1, r.hash_ids.length - 1)]!;
  return (Math.imul(key, 0x9e3779b1) >>> 0) % workers;
}

/** One worker's cache of chunks (Map order = LRU order), in gateway blocks. */
interface SimWorker {
  chunks: Map<number, number>;
  used: number;
}

/** The events one request causes on its worker. */
function eventsFor(r: Request, w: SimWorker): { events: KvEvent[]; stored: number; removed: number } {
  const events: KvEvent[] = [];
  let stored = 0;
  let removed = 0;
  let parent: bigint | null = null;
  let run: { hashes: bigint[]; tokens: number[]; parent: bigint | null } | null = null;
  const flush = () => {
    if (run && run.hashes.length > 0) {
      events.push({
        kind: 'stored',
        engineHashes: run.hashes,
        parentEngineHash: run.parent,
        tokenIds: run.tokens,
        blockSize: BS,
        tier: 'gpu',
        loraName: null,
      });
    }
    run = null;
  };
  const current = new Set(r.hash_ids);
  for (let k = 0; k < r.hash_ids.length; k++) {
    const id = r.hash_ids[k]!;
    const need = blocksOfChunk(r, k);
    if (need <= 0) break;
    const have = w.chunks.get(id) ?? 0;
    w.chunks.delete(id);
    w.chunks.set(id, Math.max(have, need)); // touch: most recently used
    if (have >= need) {
      flush();
      parent = engineHash(id, need - 1);
      continue;
    }
    if (!run) run = { hashes: [], tokens: [], parent: have > 0 ? engineHash(id, have - 1) : parent };
    const toks = fillChunk(id);
    for (let j = have; j < need; j++) {
      run.hashes.push(engineHash(id, j));
      for (let i = j * BS; i < (j + 1) * BS; i++) run.tokens.push(toks[i]!);
    }
    stored += need - have;
    w.used += need - have;
    parent = engineHash(id, need - 1);
  }
  flush();
  // Like vLLM, free a request's blocks tail first: its first chunks stay most recently used.
  for (let k = r.hash_ids.length - 1; k >= 0; k--) {
    const id = r.hash_ids[k]!;
    const n = w.chunks.get(id);
    if (n === undefined) continue;
    w.chunks.delete(id);
    w.chunks.set(id, n);
  }
  for (const [id, n] of w.chunks) {
    if (w.used <= WORKER_BLOCKS) break;
    if (current.has(id)) continue;
    w.chunks.delete(id);
    w.used -= n;
    removed += n;
    events.push({ kind: 'removed', engineHashes: Array.from({ length: n }, (_, j) => engineHash(id, j)), tier: 'gpu' });
  }
  return { events, stored, removed };
}

/** The request's prompt tokens (full blocks only). */
function promptTokens(r: Request): number[] {
  const tokens: number[] = [];
  for (let k = 0; k < r.hash_ids.length; k++) {
    const n = blocksOfChunk(r, k);
    if (n <= 0) break;
    const toks = fillChunk(r.hash_ids[k]!);
    for (let i = 0; i < n * BS; i++) tokens.push(toks[i]!);
  }
  return tokens;
}

/** Full-block hashes of a request's prompt, as the gateway would compute them. */
const promptHashes = (hasher: BlockHasher, seed: bigint, r: Request) => hasher.hashBlocks(promptTokens(r), BS, seed);

const gc = (globalThis as { gc?: () => void }).gc;
function memNow(): number {
  gc?.();
  gc?.();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

const MATCH_REPS = 5;
/** Times `match` MATCH_REPS times: the first run, and the median (filters GC and other tenants of this shared machine). */
function timeMatch(
  indexer: KvIndexer,
  hashes: bigint[],
): { first: number; median: number; result: ReturnType<KvIndexer['match']> } {
  const times: number[] = [];
  let result = indexer.match(hashes);
  for (let k = 0; k < MATCH_REPS; k++) {
    const t0 = process.hrtime.bigint();
    result = indexer.match(hashes);
    times.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  const first = times[0]!;
  times.sort((a, b) => a - b);
  return { first, median: times[MATCH_REPS >> 1]!, result };
}

async function run(hasher: BlockHasher, workers: number): Promise<RunResult> {
  const sims: SimWorker[] = Array.from({ length: workers }, () => ({ chunks: new Map(), used: 0 }));
  const memBefore = memNow();
  const indexer = new KvIndexer({ hasher, model: MODEL, blockSize: BS, maxNodes: 2 * workers * WORKER_BLOCKS });
  const sinks = sims.map((_, i) => indexer.sinkFor(`w${i}`));
  let seq = 0n;
  let applyNs = 0n;
  let stored = 0;
  let removed = 0;
  let events = 0;
  const WINDOW = 256;
  for (let start = 0; start < requests.length; start += WINDOW) {
    // Build a window of batches first, so that only applying them is timed.
    const pending: { w: number; batch: KvEventBatch }[] = [];
    for (const r of requests.slice(start, start + WINDOW)) {
      const w = assign(r, workers);
      const ev = eventsFor(r, sims[w]!);
      stored += ev.stored;
      removed += ev.removed;
      events += ev.events.length;
      pending.push({ w, batch: { seq: ++seq, ts: 0, dataParallelRank: null, events: ev.events } });
    }
    gc?.(); // the event generator's garbage is not the indexer's cost
    const t0 = process.hrtime.bigint();
    for (const p of pending) sinks[p.w]!.apply(p.batch);
    applyNs += process.hrtime.bigint() - t0;
    // Drop the window now: left to go out of scope, the last one stays reachable from this frame and its
    // ~30 MiB of token arrays and engine hashes were counted as the index's memory.
    pending.length = 0;
    if ((start / WINDOW) % 8 === 0)
      process.stderr.write(
        `\r[${workers} workers] replay ${start + pending.length}/${requests.length} requests, ${fmt(stored, 0)} blocks stored`,
      );
  }
  process.stderr.write('\n');
  const st = indexer.stats();
  const memBytes = memNow() - memBefore;
  const heldBlocks = Object.values(st.perTarget).reduce((a, b) => a + b, 0);

  const seed = indexer.seedFor(null);
  const matchAll: number[] = [];
  const match2000: number[] = [];
  const firstAll: number[] = [];
  const first2000: number[] = [];
  let matched2000 = 0;
  let hashedBlocks = 0;
  let hashNs = 0n;
  let perBlockNs = 0n;
  for (let i = 0; i < requests.length; i++) {
    const r = requests[i]!;
    const tokens = promptTokens(r);
    const h0 = process.hrtime.bigint();
    const hashes = hasher.hashBlocks(tokens, BS, seed);
    hashNs += process.hrtime.bigint() - h0;
    // The same chain one xxhash-wasm call per block, as before: side by side, and a check that both agree.
    const h1 = process.hrtime.bigint();
    const before = perBlock(tokens, BS, seed);
    perBlockNs += process.hrtime.bigint() - h1;
    if (before.length !== hashes.length || before.some((h, k) => h !== hashes[k]))
      throw new Error(`request ${i}: chain hashing differs from per-block hashing`);
    hashedBlocks += hashes.length;
    const all = timeMatch(indexer, hashes);
    matchAll.push(all.median);
    firstAll.push(all.first);
    if (hashes.length >= 2000) {
      const head = timeMatch(indexer, hashes.slice(0, 2000));
      match2000.push(head.median);
      first2000.push(head.first);
      let best = 0;
      for (const c of head.result.values()) best = Math.max(best, c.blocks);
      matched2000 += best;
    }
    if (i % 2000 === 0) process.stderr.write(`\r[${workers} workers] match ${i}/${requests.length}`);
  }
  process.stderr.write('\n');
  for (const xs of [matchAll, match2000, firstAll, first2000]) xs.sort((a, b) => a - b);
  return {
    workers,
    batches: Number(seq),
    events,
    stored,
    removed,
    applySec: Number(applyNs) / 1e9,
    nodes: st.nodes,
    heldBlocks,
    memBytes,
    rejected: st.rejectedInserts,
    unknownParent: Object.values(st.perWorker).reduce((a, w) => a + w.unknownParent, 0),
    matchAll,
    match2000,
    firstAll,
    first2000,
    matched2000: match2000.length ? matched2000 / match2000.length : 0,
    hashPerSec: hashedBlocks / (Number(hashNs) / 1e9),
    perBlockHashPerSec: hashedBlocks / (Number(perBlockNs) / 1e9),
  };
}

/** RadixIndex alone (pre-hashed chains, no engine-hash maps): the tree's own insert rate. */
async function rawInsert(hasher: BlockHasher): Promise<{ blocks: number; perSec: number }> {
  const seed = hasher.seedFor(MODEL);
  const chains = requests.slice(0, 3000).map((r) => promptHashes(hasher, seed, r));
  const ix = new RadixIndex({ maxNodes: 20_000_000 });
  let blocks = 0;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < chains.length; i++) blocks += ix.insert(`w${i % 8}`, undefined, chains[i]!, 'gpu');
  return { blocks, perSec: blocks / (Number(process.hrtime.bigint() - t0) / 1e9) };
}

/** Block hashing as it was before whole-chain hashing: one `h64Raw` per block, a BigInt in and out of each. */
let perBlock: (tokens: ArrayLike<number>, blockSize: number, seed: bigint) => bigint[] = () => [];

async function main(): Promise<void> {
  const hasher = await createBlockHasher();
  const x = await xxhash();
  perBlock = (tokens, blockSize, seed) => {
    const bytes = new Uint8Array(8 + 4 * blockSize);
    const words = new Uint32Array(bytes.buffer);
    const parent = new BigUint64Array(bytes.buffer, 0, 1);
    const out: bigint[] = [];
    let prev = 0n;
    for (let b = 0, t = 0; b < Math.floor(tokens.length / blockSize); b++) {
      parent[0] = prev;
      for (let j = 2; j < blockSize + 2; j++) words[j] = tokens[t++]!;
      prev = x.h64Raw(bytes, seed);
      out.push(prev);
    }
    return out;
  };
  process.stderr.write(
    `${requests.length} requests from ${tracePath}; block size ${BS}, ${WORKER_BLOCKS} blocks per worker${gc ? '' : ' (no --expose-gc: memory figures are rough)'}\n`,
  );
  const raw = await rawInsert(hasher);
  const results: RunResult[] = [];
  for (const w of workerCounts) results.push(await run(hasher, w));
  const cmd = `node ${gc ? '--expose-gc ' : ''}dist/bench/index-bench.js ${process.argv.slice(2).join(' ')}`.trim();
  const text = report({
    cmd,
    tracePath,
    requests: requests.length,
    blockSize: BS,
    workerBlocks: WORKER_BLOCKS,
    matchReps: MATCH_REPS,
    raw,
    results,
  });
  mkdirSync(values.out, { recursive: true });
  writeFileSync(join(values.out, 'index-bench.md'), text);
  process.stdout.write(text);
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
