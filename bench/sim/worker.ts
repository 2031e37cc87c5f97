import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { createLogger } from '../../gateway/ops/log.js';
import { createBlockHasher } from './block-hash.js';
import { KvCache } from './kv-cache.js';
import { CPU_TIER_DEFAULTS, CpuTier } from './cpu-tier.js';
import { KvEventPublisher } from './kv-publisher.js';
import { SimMetrics } from './metrics.js';
import { NixlAgent, type NixlOptions } from './nixl.js';
import { Scheduler } from './scheduler.js';
import { SimLoras } from './lora.js';
import { createSimHandler, type SimStats } from './server.js';
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
  /** Connectable PUB endpoint, or undefined without KV events. */
  readonly kvEvents: string | undefined;
  readonly kvReplay: string | undefined;
  readonly blockSize: number;
  readonly kvBlocks: number;
  readonly model: string;
  readonly role: SimRole;
  /** The NIXL engine id this worker puts in `kv_transfer_params.remote_engine_id`. */
  readonly engineId: string;
  readonly scheduler: Scheduler;
  readonly cache: KvCache;
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

  const cache = new KvCache({ blockSize, numBlocks: kvBlocks, hasher: await createBlockHasher(options.hashSeed) });
  let publisher: KvEventPublisher | undefined;
  if (options.kvEvents) {
    publisher = await KvEventPublisher.open({
      endpoint: options.kvEvents.endpoint,
      replayEndpoint: options.kvEvents.replayEndpoint,
      format: options.kvEvents.format,
      topic: options.kvEvents.topic,
    });
  }
  const timing = { ...DEFAULT_TIMING, ...options.timing };
  const nixl = new NixlAgent({ ...NIXL_DEFAULTS, ...options.nixl, speedup: timing.speedup }, logger);
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
    publish: (events) => publisher?.publish(events),
  });
  const metrics = new SimMetrics(model, scheduler, cache);
  const stats = (): SimStats => {
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
      preemptions: c.preemptions,
      kvEventsNextSeq: publisher ? String(publisher.nextSeq) : null,
      kvLoads: c.kvLoads,
      kvLoadTokens: c.kvLoadTokens,
      kvLoadFailures: c.kvLoadFailures,
      nixlHeld: nixl.heldRequests,
      nixlPulled: nixl.counters.pulled,
      nixlExpired: nixl.counters.expired,
      ...(cpu ? { ...cpu.stats, cpuLoadTokens: c.cpuLoadTokens } : {}),
    };
  };
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
    createSimHandler({ ctx, scheduler, cache, metrics, publisher, logger, nixl, stats, cpu }),
  );
  try {
    await listen(server, options.port ?? 0, host);
  } catch (err) {
    scheduler.close();
    nixl.close();
    await publisher?.close();
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
    kvEvents: publisher?.endpoint,
    kvReplay: publisher?.replayEndpoint,
    blockSize,
    kvBlocks,
    model,
    role: options.role ?? 'both',
    engineId: nixl.engineId,
    scheduler,
    cache,
    loras: ctx.loras,
    stats,
    close() {
      closing ??= (async () => {
        scheduler.close();
        nixl.close();
        server.closeAllConnections();
        await new Promise<void>((resolve) => server.close(() => resolve()));
        await publisher?.close();
      })();
      return closing;
    },
  };
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
