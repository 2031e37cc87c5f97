import { resolve } from 'node:path';
import { MEDIA_START } from '../indexer/tokenize/media.js';
import type { Logger } from 'pino';
import type { GatewayConfig } from '../config/schema.js';
import { createBlockHasher } from '../indexer/index/block-hash.js';
import { createEventSource } from '../indexer/events/create-source.js';
import type { EventSink, EventSource } from '../indexer/events/source.js';
import { KvIndexer } from '../indexer/index/kv-indexer.js';
import {
  createPromptBlocksProvider,
  localTokenSource,
  remoteTokenSource,
  type PromptBlocksFn,
  type PromptTokenSource,
} from '../indexer/tokenize/prompt-tokens.js';
import type { MatchCounts } from '../indexer/index/radix-index.js';
import { RemoteTokenizer } from '../indexer/tokenize/remote-tokenizer.js';
import { PromptTokenizer } from '../indexer/tokenize/tokenizer.js';
import type { WorkerConfig } from './fleet/fleet.js';
import type { PromptBlocksProvider } from './routing/pipeline.js';
import { StartupError } from './ops/startup-error.js';
import { ContextLengthError } from '../indexer/tokenize/context-bound.js';
import { contextLengthError } from './front/engine-errors.js';
import type { PrefixMatcher } from './routing/strategies/strategy.js';

/** What the KV-aware parts of the gateway share: one index per model, its event sources, and prompt hashing. */
export interface KvServices {
  /** `StrategyDeps.index`: matches a prompt's blocks against every model's index (empty until one exists). */
  readonly matcher: Required<Pick<PrefixMatcher, 'match' | 'blocksOf'>>;
  promptBlocks: PromptBlocksProvider | undefined;
  readonly indexers: ReadonlyMap<string, KvIndexer>;
  readonly sources: ReadonlyMap<string, EventSource>;
  readonly tokenizers: ReadonlyMap<string, PromptTokenizer | RemoteTokenizer>;
  /** `/debug/workers` view: per worker, indexed blocks, last sequence number, event lag. */
  stats(): Record<string, unknown>;
  /** A worker joined the fleet: subscribes to its KV events (if any) and feeds its model's index. */
  addWorker(worker: WorkerConfig): Promise<void>;
  /** A worker left: stops its event source, then drops its index entries. */
  removeWorker(id: string): Promise<void>;
  /**
   * A worker's health changed. Going down keeps its index: the engine keeps
   * its cache through a blip, and routing skips the worker anyway. Coming back
   * probes its event stream: the replay from our last batch fills what was
   * lost meanwhile, and clears the index only if the engine restarted.
   */
  workerStatus(id: string, up: boolean): void;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface KvServicesOptions {
  log: Logger;
  /** A healthy worker's base URL serving `model`, for the remote tokenizer. */
  workerUrlFor: (model: string) => string | undefined;
  /** Seconds and tokens of each tokenization, for the metrics. */
  onTokenized?: ((seconds: number, tokens: number) => void) | undefined;
  /** The base model of a LoRA adapter loaded at runtime (gateway/fleet/adapters.ts), or undefined. */
  adapterParent?: (name: string) => string | undefined;
}

const EMPTY_MATCH: Map<string, MatchCounts> = new Map();

/**
 * Builds tokenizers, block hasher, per-model KV indexes and one event source per
 * worker with `kvEvents`, as the config says; workers added later (discovery,
 * reload) get theirs through `addWorker`. The model of a worker's events is the
 * first of its models that has a `models` entry (a LoRA name maps to its base).
 */
export async function buildKvServices(config: GatewayConfig, options: KvServicesOptions): Promise<KvServices> {
  const { log } = options;
  const hasher = await createBlockHasher();
  const baseOf = new Map<string, string>();
  for (const [model, mc] of Object.entries(config.models)) {
    baseOf.set(model, model);
    for (const lora of mc.loras) baseOf.set(lora, model);
  }
  const baseOfName = (name: string): string | undefined => baseOf.get(name) ?? options.adapterParent?.(name);
  const indexers = new Map<string, KvIndexer>();
  const sources = new Map<string, EventSource>();
  const sinkOf = new Map<string, EventSink>();
  let current: KvServices['matcher'] = multiMatcher([]);
  const indexerFor = (model: string): KvIndexer => {
    let indexer = indexers.get(model);
    if (!indexer) {
      indexers.set(
        model,
        (indexer = new KvIndexer({ hasher, model, blockSize: config.models[model]!.blockSize, log })),
      );
      current = indexers.size === 1 ? singleMatcher(indexer) : multiMatcher([...indexers.values()]);
    }
    return indexer;
  };
  /** Registers the worker's source; false when it publishes nothing we can index. */
  const register = (w: WorkerConfig): boolean => {
    if (!w.kvEvents) return false;
    const model = w.models.map((m) => baseOf.get(m)).find((m) => m !== undefined);
    if (model === undefined) {
      log.warn(
        { worker: w.id, models: w.models },
        'worker publishes kv events but none of its models has a models: entry (block size, tokenizer); its events are ignored',
      );
      return false;
    }
    sources.set(w.id, createEventSource(w.kvEvents, w.id, log, { workerUrl: w.url }));
    sinkOf.set(w.id, indexerFor(model).sinkFor(w.id));
    return true;
  };
  for (const w of config.fleet.workers) register(w);

  // Adds and removes of one id run in order, so a replaced worker's old source is stopped before its new one starts.
  const queues = new Map<string, Promise<void>>();
  const serial = (id: string, step: () => Promise<void>): Promise<void> => {
    const next = (queues.get(id) ?? Promise.resolve())
      .then(step)
      .catch((err: unknown) => log.warn({ err, worker: id }, 'kv event source change failed'));
    queues.set(id, next);
    void next.then(() => {
      if (queues.get(id) === next) queues.delete(id);
    });
    return next;
  };
  let started = false;
  let stopped = false;
  const tokenizers = new Map<string, PromptTokenizer | RemoteTokenizer>();
  const providers = new Map<string, PromptBlocksFn>();
  const services: KvServices = {
    matcher: { match: (h) => current.match(h), blocksOf: (t) => current.blocksOf(t) },
    promptBlocks: undefined,
    indexers,
    sources,
    tokenizers,
    stats: () => workerStats(indexers, sources),
    addWorker: (w) =>
      serial(w.id, async () => {
        if (stopped || sources.has(w.id) || !register(w)) return;
        if (started) await sources.get(w.id)!.start(sinkOf.get(w.id)!);
      }),
    removeWorker: (id) =>
      serial(id, async () => {
        const source = sources.get(id);
        sources.delete(id);
        sinkOf.delete(id);
        await source?.stop();
        for (const indexer of indexers.values()) indexer.clearWorker(id);
      }),
    workerStatus(id, up) {
      if (up) sources.get(id)?.probe();
    },
    async start() {
      started = true;
      for (const [id, source] of [...sources]) await source.start(sinkOf.get(id)!);
    },
    async stop() {
      stopped = true;
      await Promise.all([...sources.values()].map((s) => s.stop()));
    },
  };
  for (const [model, mc] of Object.entries(config.models)) {
    let source: PromptTokenSource | undefined;
    let mediaStartId: number | undefined;
    if (mc.tokenizer.type === 'local') {
      const dir = resolve(mc.tokenizer.dir);
      const tokenizer = await PromptTokenizer.load(dir, { cacheBytes: mc.tokenCacheMiB * 1024 * 1024 }).catch(
        (err: Error) => {
          throw new StartupError(`models.${model}.tokenizer.dir`, err.message);
        },
      );
      tokenizers.set(model, tokenizer);
      // Only a tokenizer that has the media start as one special token can locate media in a prompt.
      const start = await tokenizer.encode(MEDIA_START, false);
      if (start.length === 1) mediaStartId = start[0];
      source = localTokenSource(tokenizer, { maxModelLen: mc.maxModelLen ?? tokenizer.lengths.modelMaxLength });
    } else if (mc.tokenizer.type === 'remote') {
      const remote = await RemoteTokenizer.create({
        baseUrl: () => options.workerUrlFor(model),
        timeoutMs: mc.tokenizer.timeoutMs,
      });
      tokenizers.set(model, remote);
      source = remoteTokenSource(remote);
    }
    if (!source) continue;
    providers.set(
      model,
      createPromptBlocksProvider({
        source,
        hasher: hasher,
        blockSize: mc.blockSize,
        mediaStartId,
        seedFor: (lora) => hasher.seedFor(model, lora),
        loraOf: (name) => (name !== model && baseOfName(name) === model ? name : null),
        observe: options.onTokenized,
      }),
    );
  }
  for (const [name, base] of baseOf)
    if (providers.has(base) && name !== base) providers.set(name, providers.get(base)!);
  if (providers.size > 0) {
    // Only a configured context length is the engine's for sure: then its refusal is answered at once.
    const refuses = (model: string) => config.models[baseOfName(model) ?? model]?.maxModelLen !== undefined;
    const blocksFor: PromptBlocksProvider = (body, model, kind) => {
      const own = providers.get(model);
      if (own) return own(body, model, kind);
      // An adapter loaded at runtime: its base model's tokenizer, its own hash seed. A remote
      // tokenizer is asked for the base model, which every worker of that model serves.
      const base = baseOfName(model);
      const provider = base === undefined ? undefined : providers.get(base);
      return provider ? provider({ ...body, model: base }, model, kind) : Promise.resolve(undefined);
    };
    services.promptBlocks = (body, model, kind) =>
      blocksFor(body, model, kind).catch((err: unknown) => {
        throw err instanceof ContextLengthError && refuses(model) ? contextLengthError(err) : err;
      });
  }
  return services;
}

function singleMatcher(index: KvIndexer): KvServices['matcher'] {
  return { match: (h) => index.match(h), blocksOf: (t) => index.blocksOf(t) };
}

/** Hashes are seeded per model, so a prompt can only match in its own model's index: the first non-empty answer is the answer. */
function multiMatcher(indexes: KvIndexer[]): KvServices['matcher'] {
  return {
    match(hashes) {
      for (const index of indexes) {
        const m = index.match(hashes);
        if (m.size > 0) return m;
      }
      return EMPTY_MATCH;
    },
    blocksOf: (t) => indexes.reduce((sum, i) => sum + i.blocksOf(t), 0),
  };
}

function workerStats(
  indexers: ReadonlyMap<string, KvIndexer>,
  sources: ReadonlyMap<string, EventSource>,
): Record<string, unknown> {
  const perWorker: Record<string, unknown> = {};
  const models: Record<string, unknown> = {};
  for (const [model, indexer] of indexers) {
    const s = indexer.stats();
    models[model] = {
      nodes: s.nodes,
      maxNodes: s.maxNodes,
      rejectedInserts: s.rejectedInserts,
      blockSizeMismatches: s.blockSizeMismatches,
    };
    for (const [id, w] of Object.entries(s.perWorker)) perWorker[id] = { model, index: w };
  }
  for (const [id, source] of sources) {
    const entry = (perWorker[id] ??= {}) as Record<string, unknown>;
    entry.events = source.stats();
  }
  return { models, workers: perWorker };
}
