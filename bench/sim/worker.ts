import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { createLogger } from '../../gateway/ops/log.js';
import { createBlockHasher } from './block-hash.js';
import { KvCache } from './kv-cache.js';
import { CPU_TIER_DEFAULTS, CpuTier } from './cpu-tier.js';
import { SimMetrics } from './metrics.js';
import { NixlAgent, type NixlOptions } from './nixl.js';
import { Scheduler } from './scheduler.js';
import { SimLoras } from './lora.js';
import { createSimHandler, type SimRankDeps, type SimStats } from './server.js';
import { openRankPublishers } from './dp-ports.js';
import { TrtllmEventQueue } from './trtllm-events.js';
import { SimTokenizer, defaultTokenizerDir } from './text.js';
import { NIXL_DEFAULTS, SIM_DEFAULTS } from './defaults.js';
import { DEFAULT_TIMING, type TimingModel } from './timing.js';

export interface SimKvEventsOptions {
  /** vLLM semantics: binds when it contains `*` (all interfaces), connects otherwise. `tcp://127.0.0.1:*` = a free port. */
  endpoint: string;
  replayEndpoint?: string | undefined;
  format?: 'current' | 'legacy' | undefined;
  topic?: string | undefined;
}

export interface SimTrtllmEventsOptions {
  /** Blocks of the secondary cache level (TRT-LLM's host cache); 0 = none. */
  secondaryBlocks?: number | undefined;
  /** `event_buffer_max_size` (default 10_000). */
  maxEvents?: number | undefined;
}

export interface SimWorkerOptions {
  id?: string | undefined;
  host?: string | undefined;
  /** 0 = a free port. */
  port?: number | undefined;
  model?: string | undefined;
  /** A loaded tokenizer (shared by the workers of one process), or a directory to load one from. */
  tokenizer?: SimTokenizer | undefined;
  tokenizerDir?: string | undefined;
  blockSize?: number | undefined;
  kvBlocks?: number | undefined;
  maxNumBatchedTokens?: number | undefined;
  maxNumSeqs?: number | undefined;
  maxModelLen?: number | undefined;
  /** Tokens a chat request without max_tokens generates before "EOS". */
  defaultChatTokens?: number | undefined;
  /** vLLM's --stream-interval (default 1: one SSE chunk per token). */
  streamInterval?: number | undefined;
  timing?: Partial<TimingModel> | undefined;
  kvEvents?: SimKvEventsOptions | undefined;
  /**
   * TensorRT-LLM event mode instead of vLLM's ZeroMQ publisher: trtllm-serve's
   * `POST /kv_cache_events` JSON, with an optional secondary (host) cache level.
   */
  trtllmEvents?: SimTrtllmEventsOptions | undefined;
  /**
   * vLLM's --data-parallel-size: ranks in this server, each with its own KV
   * cache, scheduler and KV event publisher (publish and replay ports + rank).
   */
  dataParallelSize?: number | undefined;
  /** Fixes the block-hash root seed (default random per worker, as vLLM without PYTHONHASHSEED). */
  hashSeed?: bigint | undefined;
  logger?: Logger | undefined;
  /**
   * P/D role, for labels and the ready line only: like vLLM with NixlConnector
   * (kv_role kv_both), every worker can serve either leg; the proxy decides.
   */
  role?: SimRole | undefined;
  /** KV transfer model of the NixlConnector simulation (see nixl.ts). */
  nixl?: Partial<Omit<NixlOptions, 'speedup'>> | undefined;
  /** vLLM's OffloadingConnector `num_cpu_blocks`: host-memory KV tier in blocks (default 0: none). */
  cpuKvBlocks?: number | undefined;
  /** Host-to-device bandwidth of block load-back, GB/s (default 25, PCIe 4.0 x16). */
  pcieGBps?: number | undefined;
}

export type SimRole = 'both' | 'prefill' | 'decode';

export interface SimWorker {
  readonly id: string;
  /** `http://host:port`, the real port. */
  readonly url: string;
  /** Connectable PUB endpoint (rank 0's), or undefined without ZeroMQ KV events. */
  readonly kvEvents: string | undefined;
  readonly kvReplay: string | undefined;
  /** Every rank's endpoints, by rank (rank r's ports are rank 0's + r). */
  readonly kvEventsRanks: readonly { endpoint: string; replayEndpoint: string | undefined }[];
  readonly dataParallelSize: number;
  /** `trtllm` when the worker serves trtllm-serve's `/kv_cache_events` instead of vLLM's ZeroMQ events. */
  readonly kvEventsFormat: 'current' | 'legacy' | 'trtllm' | null;
  readonly blockSize: number;
  readonly kvBlocks: number;
  readonly model: string;
  readonly role: SimRole;
  /** The NIXL engine id this worker puts in `kv_transfer_params.remote_engine_id`. */
  readonly engineId: string;
  /** Rank 0's scheduler and cache; `ranks` has every rank's. */
  readonly scheduler: Scheduler;
  readonly cache: KvCache;
  readonly ranks: readonly SimRankDeps[];
  /** LoRA adapters loaded at runtime (`POST /v1/load_lora_adapter`). */
  readonly loras: SimLoras;
  stats(): SimStats;
  close(): Promise<void>;
}

export { SIM_DEFAULTS };

/** Starts one simulated vLLM worker: HTTP server, KV cache, scheduler and (optionally) KV event publisher. */
export async function startSimWorker(options: SimWorkerOptions = {}): Promise<SimWorker> {
  const id = options.id ?? 'sim-0';
  const host = options.host ?? SIM_DEFAULTS.host;
  const model = options.model ?? SIM_DEFAULTS.model;
  const blockSize = options.blockSize ?? SIM_DEFAULTS.blockSize;
  const kvBlocks = options.kvBlocks ?? SIM_DEFAULTS.kvBlocks;
  const maxModelLen = options.maxModelLen ?? SIM_DEFAULTS.maxModelLen;
  const logger = (options.logger ?? createLogger('kvgate-sim')).child({ worker: id });
  const tokenizer = options.tokenizer ?? (await SimTokenizer.load(options.tokenizerDir ?? defaultTokenizerDir()));

  const dpSize = options.dataParallelSize ?? 1;
  if (!Number.isInteger(dpSize) || dpSize < 1) throw new RangeError('dataParallelSize must be an integer >= 1');
  if (options.trtllmEvents && options.kvEvents) throw new Error('give kvEvents (vLLM) or trtllmEvents, not both');
  if (options.trtllmEvents && dpSize > 1) throw new Error('TRT-LLM event mode runs one rank (no attention DP)');
  const secondaryBlocks = options.trtllmEvents?.secondaryBlocks ?? 0;
  const trtllm = options.trtllmEvents
    ? new TrtllmEventQueue({
        windowSize: maxModelLen,
        blocksPerCacheLevel: [kvBlocks, secondaryBlocks],
        maxEvents: options.trtllmEvents.maxEvents,
      })
    : undefined;
  const publishers = options.kvEvents ? await openRankPublishers(options.kvEvents, dpSize) : [];
  const timing = { ...DEFAULT_TIMING, ...options.timing };
  const nixl = new NixlAgent({ ...NIXL_DEFAULTS, ...options.nixl, speedup: timing.speedup }, logger);
  // One hasher for all ranks: vLLM's ranks share the process-wide NONE_HASH seed.
  const hasher = await createBlockHasher(options.hashSeed);
  const ranks: SimRankDeps[] = Array.from({ length: dpSize }, (_, rank) => {
    const cache = new KvCache({
      blockSize,
      numBlocks: kvBlocks,
      hasher,
      secondaryBlocks,
      resetAs: trtllm ? 'removed' : 'cleared',
    });
    const publisher = publishers[rank];
    // Each rank is its own engine core with its own host-memory pool, as vLLM's offloading connector has per engine.
    const cpu = options.cpuKvBlocks
      ? new CpuTier({
          numBlocks: options.cpuKvBlocks,
          pcieGBps: options.pcieGBps ?? CPU_TIER_DEFAULTS.pcieGBps,
          bytesPerToken: options.nixl?.bytesPerToken ?? NIXL_DEFAULTS.bytesPerToken,
          blockSize,
          speedup: timing.speedup,
        })
      : undefined;
    const scheduler = new Scheduler({
      cache,
      cpu,
      timing,
      maxNumBatchedTokens: options.maxNumBatchedTokens ?? SIM_DEFAULTS.maxNumBatchedTokens,
      maxNumSeqs: options.maxNumSeqs ?? SIM_DEFAULTS.maxNumSeqs,
      publish: (events) => (trtllm ? trtllm.publish(events) : publisher?.publish(events)),
    });
    return { rank, cache, scheduler, publisher, cpu };
  });
  const { cache, scheduler } = ranks[0]!;
  const metrics = new SimMetrics(model, ranks);
  const rankStats = ({ cache, scheduler, publisher, cpu }: SimRankDeps): SimStats => {
    const k = cache.stats();
    const c = scheduler.counters;
    return {
      id,
      running: scheduler.running.length,
      waiting: scheduler.waiting.length,
      kvBlocksUsed: k.usedBlocks,
      kvBlocksTotal: k.totalBlocks,
      kvBlocksCached: k.cachedBlocks,
      kvUsage: cache.usage,
      evictions: k.evictions,
      prefixQueryTokens: c.prefixQueryTokens,
      prefixHitTokens: c.prefixHitTokens,
      prefillTokensComputed: c.prefillTokensComputed,
      decodeTokens: c.decodeTokens,
      generatedTokens: c.generatedTokens,
      steps: c.steps,
      lostMs: Math.round(c.lostMs),
      prefillBusyMs: Math.round(c.prefillBusyMs),
      preemptions: c.preemptions,
      kvEventsNextSeq: publisher ? String(publisher.nextSeq) : trtllm ? String(trtllm.nextEventId) : null,
      kvLoads: c.kvLoads,
      kvLoadTokens: c.kvLoadTokens,
      kvLoadFailures: c.kvLoadFailures,
      nixlHeld: nixl.heldRequests,
      nixlPulled: nixl.counters.pulled,
      nixlExpired: nixl.counters.expired,
      kvSecondaryBlocksCached: k.secondaryCachedBlocks,
      kvOffloads: k.offloads,
      kvSecondaryEvictions: k.secondaryEvictions,
      ...(cpu ? { ...cpu.stats, cpuLoadTokens: c.cpuLoadTokens } : {}),
    };
  };
  const stats = (): SimStats => (ranks.length === 1 ? rankStats(ranks[0]!) : sumStats(ranks.map(rankStats)));
  const ctx = {
    model,
    maxModelLen,
    kvCapacityTokens: kvBlocks * blockSize,
    defaultChatTokens: options.defaultChatTokens ?? SIM_DEFAULTS.defaultChatTokens,
    streamInterval: options.streamInterval ?? SIM_DEFAULTS.streamInterval,
    tokenizer,
    loras: new SimLoras(),
  };
  const server = createServer(
    { keepAliveTimeout: 65_000 },
    createSimHandler({ ...ranks[0]!, ctx, metrics, logger, nixl, stats, ranks, trtllm }),
  );
  try {
    await listen(server, options.port ?? 0, host);
  } catch (err) {
    for (const r of ranks) r.scheduler.close();
    nixl.close();
    await Promise.all(publishers.map((p) => p.close()));
    throw err;
  }
  const { port } = server.address() as AddressInfo;
  // A wildcard listen address is not something a client can dial: report loopback.
  const dial = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  const url = `http://${dial.includes(':') ? `[${dial}]` : dial}:${port}`;
  nixl.host = dial;
  nixl.port = port;

  let closing: Promise<void> | undefined;
  return {
    id,
    url,
    kvEvents: publishers[0]?.endpoint,
    kvReplay: publishers[0]?.replayEndpoint,
    kvEventsRanks: publishers.map((p) => ({ endpoint: p.endpoint, replayEndpoint: p.replayEndpoint })),
    dataParallelSize: dpSize,
    kvEventsFormat: trtllm ? 'trtllm' : options.kvEvents ? (options.kvEvents.format ?? 'current') : null,
    blockSize,
    kvBlocks,
    model,
    role: options.role ?? 'both',
    engineId: nixl.engineId,
    scheduler,
    cache,
    ranks,
    loras: ctx.loras,
    stats,
    close() {
      closing ??= (async () => {
        for (const r of ranks) r.scheduler.close();
        nixl.close();
        server.closeAllConnections();
        await new Promise<void>((resolve) => server.close(() => resolve()));
        await Promise.all(publishers.map((p) => p.close()));
      })();
      return closing;
    },
  };
}

/** The process's figures with data parallelism: counts summed over ranks, usage averaged, each rank's own kept. */
function sumStats(all: SimStats[]): SimStats {
  const total = { ...all[0]! } as unknown as Record<string, unknown>;
  for (const s of all.slice(1))
    for (const [k, v] of Object.entries(s)) if (typeof v === 'number') total[k] = (total[k] as number) + v;
  const out = total as unknown as SimStats;
  out.kvUsage = all.reduce((n, s) => n + s.kvUsage, 0) / all.length;
  out.kvEventsNextSeq = null;
  // The NIXL agent is the server's, not a rank's.
  for (const k of ['nixlHeld', 'nixlPulled', 'nixlExpired'] as const) out[k] = all[0]![k];
  out.dataParallelRanks = all;
  return out;
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}
