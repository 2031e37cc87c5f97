import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { markdownTable } from './lib/child.js';
import { parseBenchFlags, UsageError } from './lib/flags.js';

const HELP = `Decision-level analysis of a replicas run: what each gateway replica believed about the fleet's load
when it routed, against the fleet's true load at that moment (every replica's own load summed).
Reads the traces \`bench:replicas -- --trace-decisions DIR\` writes (one file per replica and row) and prints a table.
Usage: node dist/bench/replicas-decisions.js --dir DIR [--window-ms 5]`;

/** One line of a replica's trace (gateway/fleet/load-sharing.ts `#traceLine`): one change of its own load. */
interface TraceLine {
  /** Wall clock, ms. */
  t: number;
  /** Replica id. */
  r: string;
  /** The load ticket (request) id, per replica. */
  id: number;
  /** Worker. */
  w: string;
  /** [in-flight, prefill requests, prefill tokens, decode requests, decode blocks]: +1 in-flight = a routing decision. */
  d: number[];
  /** Per worker (fleet order): [in-flight, prefill tokens, decode blocks], this replica's own load. */
  local: number[][];
  /** The same, as its strategy read it: own plus what peers shared. */
  seen: number[][];
  /** With `orderDecisions`: this replica's decisions so far that waited for others', and of those, timed out. */
  waits?: [number, number];
  /** Delta batches received from the others so far: count, summed age ms, largest age ms. */
  age?: [number, number, number];
}

export interface RowAnalysis {
  row: string;
  replicas: number;
  decisions: number;
  /** Mean over decisions of the in-flight requests the decider did not see (all workers). */
  unseenRequests: number;
  /** Mean prefill tokens not seen. */
  unseenPrefillTokens: number;
  /** Share of decisions where the worker with the least queued prefill differs between belief and truth. */
  leastPrefillDiffers: number;
  /** Share of decisions with another replica's decision in the preceding `windowMs` (invisible if deltas are slower). */
  concurrentShare: number;
  /** Share of decisions that chose the same worker as another replica's decision within `windowMs` before it. */
  sameWorkerShare: number;
  /** The same counting every replica's decisions, its own too: for one gateway, what a burst does anyway. */
  sameWorkerAnyShare: number;
  /** With `orderDecisions`: decisions that waited for another replica's earlier one, and waits that timed out. */
  waited?: number;
  timedOut?: number;
  /** Mean and largest age of other replicas' delta batches on receipt, over all replicas (ms). */
  deltaAgeMeanMs?: number;
  deltaAgeMaxMs?: number;
}

const argmin = (xs: number[]) => xs.reduce((best, x, i) => (x < xs[best]! ? i : best), 0);

/**
 * Merges one row's replica traces by wall clock and compares belief with truth at every routing decision. A
 * replica silent for `staleMs` no longer counts (a killed one's last load would otherwise stay "true" forever).
 */
export function analyseRow(row: string, lines: TraceLine[], windowMs: number, staleMs = 2000): RowAnalysis {
  lines.sort((a, b) => a.t - b.t);
  const latest = new Map<string, number[][]>();
  const lastSeen = new Map<string, number>();
  const recent: TraceLine[] = [];
  const replicas = new Set(lines.map((l) => l.r)).size;
  let decisions = 0;
  let unseenRequests = 0;
  let unseenTokens = 0;
  let differs = 0;
  let concurrent = 0;
  let sameWorker = 0;
  let sameWorkerAny = 0;
  for (const line of lines) {
    latest.set(line.r, line.local);
    lastSeen.set(line.r, line.t);
    if (line.d[0] !== 1) continue;
    for (const [r, t] of lastSeen) {
      if (t >= line.t - staleMs) continue;
      latest.delete(r);
      lastSeen.delete(r);
    }
    decisions++;
    const workers = line.seen.length;
    const trueRequests = new Array<number>(workers).fill(0);
    const trueTokens = new Array<number>(workers).fill(0);
    for (const local of latest.values()) {
      for (let w = 0; w < workers; w++) {
        trueRequests[w]! += local[w]?.[0] ?? 0;
        trueTokens[w]! += local[w]?.[1] ?? 0;
      }
    }
    for (let w = 0; w < workers; w++) {
      unseenRequests += Math.max(0, trueRequests[w]! - line.seen[w]![0]!);
      unseenTokens += Math.max(0, trueTokens[w]! - line.seen[w]![1]!);
    }
    if (argmin(line.seen.map((s) => s[1]!)) !== argmin(trueTokens)) differs++;
    while (recent.length > 0 && recent[0]!.t < line.t - windowMs) recent.shift();
    const others = recent.filter((l) => l.r !== line.r);
    if (others.length > 0) concurrent++;
    if (others.some((l) => l.w === line.w)) sameWorker++;
    if (recent.some((l) => l.w === line.w)) sameWorkerAny++;
    recent.push(line);
  }
  const per = (x: number) => (decisions ? x / decisions : 0);
  // Each replica's counters are cumulative: its last line has its totals.
  const lastWaits = new Map<string, [number, number]>();
  const lastAge = new Map<string, [number, number, number]>();
  for (const line of lines) {
    if (line.waits) lastWaits.set(line.r, line.waits);
    if (line.age) lastAge.set(line.r, line.age);
  }
  const waits = [...lastWaits.values()];
  const ages = [...lastAge.values()];
  const ageCount = ages.reduce((a, x) => a + x[0], 0);
  return {
    row,
    replicas,
    decisions,
    unseenRequests: per(unseenRequests),
    unseenPrefillTokens: per(unseenTokens),
    leastPrefillDiffers: per(differs),
    concurrentShare: per(concurrent),
    sameWorkerShare: per(sameWorker),
    sameWorkerAnyShare: per(sameWorkerAny),
    ...(waits.length
      ? { waited: waits.reduce((a, w) => a + w[0], 0), timedOut: waits.reduce((a, w) => a + w[1], 0) }
      : {}),
    ...(ageCount > 0
      ? {
          deltaAgeMeanMs: ages.reduce((a, x) => a + x[1], 0) / ageCount,
          deltaAgeMaxMs: Math.max(...ages.map((x) => x[2])),
        }
      : {}),
  };
}

/** Groups `<row>-<replica id>.jsonl` files by row, in the order the rows ran (ids: `xxxxxxxx-xxxx`, hex). */
export function readRows(dir: string): Map<string, TraceLine[]> {
  const rows = new Map<string, TraceLine[]>();
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.jsonl'))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  for (const f of files) {
    const row = f.replace(/-[0-9a-f]{8}-[0-9a-f]{4}\.jsonl$/, '');
    const lines = rows.get(row) ?? [];
    for (const text of readFileSync(join(dir, f), 'utf8').split('\n'))
      if (text.trim()) lines.push(JSON.parse(text) as TraceLine);
    rows.set(row, lines);
  }
  return rows;
}

function main(): void {
  const { values } = parseBenchFlags(HELP, {
    options: { dir: { type: 'string' }, 'window-ms': { type: 'string', default: '5' } },
  });
  if (!values.dir)
    throw new UsageError('--dir DIR is required (the directory given to bench:replicas --trace-decisions)');
  const windowMs = Number(values['window-ms']);
  if (!(windowMs > 0)) throw new UsageError(`--window-ms must be a positive number of ms, got ${values['window-ms']}`);
  const out: RowAnalysis[] = [];
  for (const [row, lines] of readRows(values.dir)) out.push(analyseRow(row, lines, windowMs));
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  process.stdout.write(
    markdownTable(
      [
        'row',
        'replicas',
        'decisions',
        'in-flight requests not seen (mean)',
        'prefill tokens not seen (mean)',
        'least-prefill worker differs',
        `another replica decided < ${windowMs} ms before`,
        `... and chose the same worker`,
        `same worker as any decision < ${windowMs} ms before`,
        'waited for an earlier decision elsewhere (timed out)',
        'delta age on receipt, mean / max ms',
      ],
      out.map((a) => [
        a.row,
        a.replicas,
        a.decisions,
        a.unseenRequests.toFixed(2),
        a.unseenPrefillTokens.toFixed(0),
        pct(a.leastPrefillDiffers),
        pct(a.concurrentShare),
        pct(a.sameWorkerShare),
        pct(a.sameWorkerAnyShare),
        a.waited === undefined ? '-' : `${a.waited} (${a.timedOut})`,
        a.deltaAgeMeanMs === undefined ? '-' : `${a.deltaAgeMeanMs.toFixed(1)} / ${a.deltaAgeMaxMs!.toFixed(0)}`,
      ]),
    ) + '\n',
  );
}

if (/replicas-decisions\.[jt]s$/.test(process.argv[1] ?? '')) {
  try {
    main();
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`${err.message}\n`);
    process.exit(2);
  }
}
