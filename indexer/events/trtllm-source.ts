import type { Logger } from 'pino';
import { request } from 'undici';
import { KvDecodeError } from './decode-msgpack.js';
import { decodeTrtllmEvents } from './decode-trtllm.js';
import type { EventSink, EventSource, EventSourceStats } from './source.js';

export interface TrtllmPollSourceOptions {
  workerId: string;
  /** trtllm-serve base URL, e.g. http://worker:8000; we POST {url}/kv_cache_events. */
  url: string;
  /** Poll period while healthy; default 100 ms. */
  intervalMs?: number;
  /** Ceiling of the exponential backoff after failed polls; default 5000 ms. */
  maxBackoffMs?: number;
  requestTimeoutMs?: number;
  /** Tokens per KV block (trtllm `tokens_per_block`); when unset, inferred per event from its first block. */
  blockSize?: number | undefined;
  log?: Logger | undefined;
  now?: (() => number) | undefined;
}

export interface TrtllmPollSourceStats extends EventSourceStats {
  eventsSkipped: number;
  /** Consecutive failed polls (0 while healthy). */
  failures: number;
}

/**
 * Polls trtllm-serve's `POST /kv_cache_events`, which drains the engine's
 * event queue, so nothing can be replayed: an event id that skips ahead (the
 * engine's bounded queue overflowed) or goes backwards (restart) resets the
 * worker's index. Ids are tracked per attention-DP rank, since each rank
 * numbers its own events.
 */
export class TrtllmPollSource implements EventSource {
  readonly workerId: string;
  private readonly opts: TrtllmPollSourceOptions;
  private readonly url: string;
  private readonly now: () => number;
  private readonly intervalMs: number;
  private sink: EventSink | undefined;
  private loop: Promise<void> | undefined;
  private stopped = false;
  private abort = new AbortController();
  private wake: (() => void) | undefined;
  private lastSeqByRank = new Map<number, bigint>();
  private maxWindowSize: number | undefined;
  private readonly counters: TrtllmPollSourceStats;

  constructor(options: TrtllmPollSourceOptions) {
    this.workerId = options.workerId;
    this.opts = options;
    this.url = `${options.url.replace(/\/+$/, '')}/kv_cache_events`;
    this.now = options.now ?? Date.now;
    this.intervalMs = options.intervalMs ?? 100;
    this.counters = {
      endpoint: this.url,
      connected: false,
      lastSeq: null,
      batchesApplied: 0,
      batchesReplayed: 0,
      gaps: 0,
      resets: 0,
      decodeErrors: 0,
      lastBatchAt: null,
      lagMs: null,
      eventsSkipped: 0,
      failures: 0,
    };
  }

  async start(sink: EventSink): Promise<void> {
    if (this.loop) throw new Error(`event source for ${this.workerId} already started`);
    this.sink = sink;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.abort.abort();
    this.wake?.();
    await this.loop;
    this.counters.connected = false;
  }

  stats(): TrtllmPollSourceStats {
    return { ...this.counters };
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      let delay = this.intervalMs;
      try {
        await this.pollOnce();
        this.counters.failures = 0;
        this.counters.connected = true;
      } catch (err) {
        if (this.stopped) return;
        this.counters.connected = false;
        const failures = ++this.counters.failures;
        delay = Math.min(this.intervalMs * 2 ** Math.min(failures, 16), this.opts.maxBackoffMs ?? 5000);
        // First failure, then every 20th: a worker that is down must not flood the log.
        if (failures === 1 || failures % 20 === 0) {
          this.opts.log?.warn(
            { worker: this.workerId, url: this.url, failures, err: (err as Error).message },
            'kv_cache_events poll failed',
          );
        }
      }
      if (this.stopped) return;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  private async pollOnce(): Promise<void> {
    const timeout = this.opts.requestTimeoutMs ?? 2000;
    const res = await request(this.url, {
      method: 'POST',
      signal: this.abort.signal,
      headersTimeout: timeout,
      bodyTimeout: timeout,
    });
    const text = await res.body.text();
    if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode}: ${text.slice(0, 200)}`);
    let decoded;
    try {
      decoded = decodeTrtllmEvents(text, {
        blockSize: this.opts.blockSize,
        maxWindowSize: this.maxWindowSize,
        now: this.now,
      });
    } catch (err) {
      if (!(err instanceof KvDecodeError)) throw err;
      this.counters.decodeErrors++;
      this.opts.log?.warn({ worker: this.workerId, err: err.message }, 'undecodable kv_cache_events response skipped');
      return;
    }
    this.maxWindowSize = decoded.maxWindowSize;
    this.counters.eventsSkipped += decoded.skipped;
    for (const batch of decoded.batches) {
      if (this.stopped) return;
      const rank = batch.dataParallelRank ?? -1;
      const last = this.lastSeqByRank.get(rank);
      if (last !== undefined && batch.seq !== last + 1n) {
        if (batch.seq <= last) {
          this.reset(`event ids went backwards from ${last} to ${batch.seq} (engine restarted)`);
        } else {
          this.counters.gaps++;
          this.reset(`event ids jumped from ${last} to ${batch.seq}: events lost`);
        }
      }
      this.lastSeqByRank.set(rank, batch.seq);
      this.counters.lastSeq = batch.seq;
      this.counters.lastBatchAt = this.now();
      // Empty batches stand for created/updated events: they only keep the ids contiguous.
      if (batch.events.length === 0) continue;
      this.counters.batchesApplied++;
      try {
        this.sink?.apply(batch);
      } catch (err) {
        this.opts.log?.error({ worker: this.workerId, err }, 'kv event sink failed to apply a batch');
      }
    }
  }

  private reset(reason: string): void {
    this.counters.resets++;
    this.lastSeqByRank.clear();
    this.opts.log?.warn({ worker: this.workerId, reason }, 'kv index reset for worker');
    try {
      this.sink?.reset(reason);
    } catch (err) {
      this.opts.log?.error({ worker: this.workerId, err }, 'kv event sink failed to reset');
    }
  }
}
