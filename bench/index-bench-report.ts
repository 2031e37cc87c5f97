import { cpus, totalmem } from 'node:os';

/** What one replay at a worker count measured (bench/index-bench.ts). */
export interface RunResult {
  workers: number;
  batches: number;
  events: number;
  stored: number;
  removed: number;
  applySec: number;
  nodes: number;
  heldBlocks: number;
  memBytes: number;
  rejected: number;
  unknownParent: number;
  matchAll: number[];
  match2000: number[];
  firstAll: number[];
  first2000: number[];
  matched2000: number;
  hashPerSec: number;
  perBlockHashPerSec: number;
}

export const pct = (xs: number[], p: number) => xs[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))] ?? NaN;
export const fmt = (n: number, d = 1) => n.toLocaleString('en-US', { maximumFractionDigits: d });

function table(header: string[], rows: (string | number)[][]): string {
  const line = (cells: (string | number)[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

export interface ReportInput {
  /** The command line that produced the report. */
  cmd: string;
  tracePath: string;
  requests: number;
  blockSize: number;
  workerBlocks: number;
  matchReps: number;
  /** RadixIndex alone: blocks inserted and the rate. */
  raw: { blocks: number; perSec: number };
  results: RunResult[];
}

/** The Markdown report written to bench/results/index-bench.md. */
export function report({
  cmd,
  tracePath,
  requests,
  blockSize: BS,
  workerBlocks: WORKER_BLOCKS,
  matchReps: MATCH_REPS,
  raw,
  results,
}: ReportInput): string {
  const rows = results.map((r) => [
    r.workers,
    fmt(r.events, 0),
    fmt(r.stored, 0),
    fmt(r.removed, 0),
    fmt(r.events / r.applySec / 1e3, 0),
    fmt(r.stored / r.applySec / 1e6, 2),
    fmt((r.stored + r.removed) / r.applySec / 1e6, 2),
    `${fmt(pct(r.matchAll, 50), 1)} / ${fmt(pct(r.matchAll, 99), 1)} (single ${fmt(pct(r.firstAll, 99), 1)})`,
    `${fmt(pct(r.match2000, 50), 1)} / ${fmt(pct(r.match2000, 99), 1)} (single ${fmt(pct(r.first2000, 99), 1)}; n=${r.match2000.length}, ${fmt(r.matched2000, 0)} matched)`,
    fmt(r.nodes, 0),
    fmt(r.heldBlocks, 0),
    fmt(r.memBytes / (r.heldBlocks / 1e6) / 2 ** 20, 0),
    r.rejected,
    r.unknownParent,
    `${fmt(r.hashPerSec / 1e6, 2)} (per block, before: ${fmt(r.perBlockHashPerSec / 1e6, 2)})`,
  ]);
  const header = [
    'workers',
    'events',
    'blocks stored',
    'blocks removed',
    'k events/s',
    'M stored blocks/s',
    'M block ops/s',
    'match µs p50/p99 (all prompts)',
    'match µs p50/p99, 2,000-block prompts',
    'nodes at end',
    'blocks held at end',
    'MiB per M held blocks',
    'rejected',
    'unknown parent',
    'M hashes/s',
  ];
  const text = `# Index benchmark

Command: \`${cmd}\`
Date: ${new Date().toISOString()}; machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${fmt(totalmem() / 2 ** 30, 0)} GiB, Node ${process.version}; one thread.
Trace: ${tracePath} (${requests} requests), 512-token chunks split into ${BS}-token blocks; each worker an LRU cache of ${WORKER_BLOCKS} blocks; requests assigned by their second chunk.

- Applying events = \`KvIndexer\` sink \`apply\` of pre-built batches: re-hashing every stored block (xxh64), the radix insert, the per-target engine-hash map, and removals. "M stored blocks/s" divides stored blocks by the whole apply time (removals included).
- Match = \`KvIndexer.match\` of the prompt's precomputed block hashes after the whole replay (prompts whose blocks were evicted match short): one warm-up call, then ${MATCH_REPS} timed calls per prompt; p50/p99 over prompts of the per-prompt median, "single" = p99 of the first timed call. 2,000-block column: the first 2,000 blocks of every prompt that long; "matched" = mean best-target match length.
- Memory = heapUsed + arrayBuffers after GC, minus before the index was built, divided by target-blocks held at the end (the node store grows by a quarter and the hash tables by doubling, so this includes their slack).
- RadixIndex alone (pre-hashed chains, 8 targets, no engine maps): ${fmt(raw.perSec / 1e6, 2)} M block inserts/s over ${fmt(raw.blocks, 0)} blocks.
- Hashing (\`hashBlocks\`, ${BS}-token blocks): see the last column (the trace's prompts, timed around \`hashBlocks\` only: whole chains per call in WebAssembly), next to one \`xxhash-wasm\` \`h64Raw\` call per block as before, on the same prompts in the same run (the results are checked equal).

${table(header, rows)}

Against the issue's targets (one core): block inserts >= 2 M/s: RadixIndex alone ${fmt(raw.perSec / 1e6, 2)} M/s (${raw.perSec >= 2e6 ? 'met' : 'NOT met'}); full event apply including re-hashing every block and the engine-hash maps ${results.map((r) => `${fmt(r.stored / r.applySec / 1e6, 2)} M/s (${r.workers} workers)`).join(', ')} (${results.every((r) => r.stored / r.applySec >= 2e6) ? 'met' : 'NOT met'}). Match p99 < 50 µs for a 2,000-block prompt (per-prompt median): ${results.map((r) => `${fmt(pct(r.match2000, 99), 1)} µs (${r.workers} workers)`).join(', ')} (${results.every((r) => r.match2000.length > 0 && pct(r.match2000, 99) < 50) ? 'met' : 'NOT met'}).
`;
  return text;
}
