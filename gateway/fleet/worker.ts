import { z } from 'zod';
import { eventSourceConfigSchema } from '../../indexer/events/create-source.js';
import { DEFAULT_BREAKER, WorkerBreaker, type BreakerConfig } from '../proxy/breaker.js';
import type { WorkerLoad, WorkerRole, WorkerView } from '../routing/strategies/strategy.js';
import { workerAuthShape } from '../proxy/upstream-auth.js';
import { ActiveSequences } from './active-sequences.js';

export const workerConfigSchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z0-9._:-]+$/, 'worker id may use letters, digits and . _ : - only'),
  url: z.url({ protocol: /^https?$/, error: 'must be an http(s) URL such as http://127.0.0.1:8000' }),
  models: z.array(z.string().min(1)).min(1),
  /** The worker's KV event stream (ZeroMQ for vLLM/SGLang, HTTP polling for trtllm-serve); the indexer owns its schema. */
  kvEvents: eventSourceConfigSchema.optional(),
  role: z.enum(['both', 'prefill', 'decode']).default('both'),
  labels: z.record(z.string(), z.string()).default({}),
  /** Upstream bearer token: `apiKey` or `apiKeyEnv` (gateway/proxy/upstream-auth.ts). */
  ...workerAuthShape,
});
export type WorkerConfig = z.infer<typeof workerConfigSchema>;

/**
 * One upstream engine. Implements `WorkerView`, so strategies see it directly (no copy per request).
 * `healthy` is the active health check's verdict, `breaker` the passive one from real traffic;
 * `available` folds both (and leaves out a worker being drained), and is the only thing routing looks at.
 */
export class Worker implements WorkerView {
  readonly id: string;
  readonly url: string;
  readonly models: readonly string[];
  readonly role: WorkerRole;
  readonly labels: Readonly<Record<string, string>>;
  readonly kvEvents: WorkerConfig['kvEvents'];
  /** This replica's own requests on the worker: what load tickets take and release. */
  readonly localLoad: WorkerLoad = zeroLoad();
  /**
   * What strategies read: `localLoad` itself, or with load sharing on (gateway/fleet/load-sharing.ts)
   * a second object kept at local + the other replicas' load, updated on each local change and
   * each snapshot, so reading it costs nothing per request.
   */
  readonly load: WorkerLoad;
  healthy = false;
  /** Removed from the fleet: takes no new request; in-flight ones finish. */
  draining = false;
  lastCheckAt: number | undefined;
  lastError: string | undefined;
  readonly breaker: WorkerBreaker;
  readonly active = new ActiveSequences();

  constructor(
    config: WorkerConfig,
    breaker: BreakerConfig = DEFAULT_BREAKER,
    onBreakerChange: () => void = () => {},
    sharedLoad = false,
  ) {
    this.load = sharedLoad ? zeroLoad() : this.localLoad;
    this.id = config.id;
    this.url = config.url.replace(/\/+$/, '');
    this.models = config.models;
    this.role = config.role;
    this.labels = config.labels;
    this.kvEvents = config.kvEvents;
    this.breaker = new WorkerBreaker(this.id, breaker, onBreakerChange);
  }

  /** May a new request be sent here now? Health passes, the breaker admits traffic, and it is not being drained. */
  get available(): boolean {
    return this.healthy && !this.draining && this.breaker.allowsTraffic;
  }

  /** Gone for routing and for the KV index: health failed or the breaker is open (a half-open probe slot in use is not "down"). */
  get down(): boolean {
    return !this.healthy || this.breaker.state === 'open';
  }

  /** Sets `load` to local + `remote` (other replicas' sum; undefined = none). No-op without load sharing. */
  setRemoteLoad(remote: Readonly<WorkerLoad> | undefined): void {
    const l = this.load;
    if (l === this.localLoad) return;
    const o = this.localLoad;
    l.inflightRequests = o.inflightRequests + (remote?.inflightRequests ?? 0);
    l.prefillRequests = o.prefillRequests + (remote?.prefillRequests ?? 0);
    l.prefillTokens = o.prefillTokens + (remote?.prefillTokens ?? 0);
    l.decodeRequests = o.decodeRequests + (remote?.decodeRequests ?? 0);
    l.decodeBlocks = o.decodeBlocks + (remote?.decodeBlocks ?? 0);
  }
}

function zeroLoad(): WorkerLoad {
  return { inflightRequests: 0, prefillRequests: 0, prefillTokens: 0, decodeRequests: 0, decodeBlocks: 0 };
}

/** Adds a ticket's deltas to one load object. */
export function addLoad(
  l: WorkerLoad,
  inflight: number,
  prefillRequests: number,
  prefillTokens: number,
  decodeRequests: number,
  decodeBlocks: number,
): void {
  l.inflightRequests += inflight;
  l.prefillRequests += prefillRequests;
  l.prefillTokens += prefillTokens;
  l.decodeRequests += decodeRequests;
  l.decodeBlocks += decodeBlocks;
}
