import type { Logger } from 'pino';
import { request } from 'undici';
import { KvDecodeError } from './decode-msgpack.js';
import { SourceDiagnostics } from './diagnostics.js';
import { createDecoder, type PayloadDecoder, type PayloadFormat } from './formats.js';
import { Sequencer } from './sequencer.js';
import { initialStats, type EventSink, type EventSource, type EventSourceStats } from './source.js';
import type { KvEventBatch } from './types.js';

export interface TrtllmPollSourceOptions {
  workerId: string;
  /** trtllm-serve base URL, e.g. http://worker:8000; we POST {url}/kv_cache_events. */
  url: string;
  /** Poll period while healthy; default 100 ms. */
  intervalMs?: number | undefined;
  /** Ceiling of the exponential backoff after failed polls; default 5000 ms. */
  maxBackoffMs?: number | undefined;
  requestTimeoutMs?: number | undefined;
  /** Tokens per KV block (trtllm `tokens_per_block`); when unset, inferred per event from its first block. */
  blockSize?: number | undefined;
  /** Payload format of the response body; default trtllm-json. */
  format?: PayloadFormat | undefined;
  log?: Logger | undefined;
  now?: (() => number) | undefined;
}

export interface TrtllmPollSourceStats extends EventSourceStats {
  /** Consecutive failed polls (0 while healthy). */
  failures: number;
}

/**
 * Polls trtllm-serve's `POST /kv_cache_events`, which drains the engine's
 * event queue, so nothing can be replayed: an event id that skips ahead (the
 * engine's bounded queue overflowed) or goes backwards (restart) resets the
 * worker's index. Ids are sequenced per attention-DP rank (one Sequencer
 * each, without a replayer), since each rank numbers its own events.
 */
export class TrtllmPollSource implements EventSource {
  readonly workerId: string;
  readonly #opts: TrtllmPollSourceOptions;
  readonly #url: string;
  readonly #now: () => number;
  readonly #intervalMs: number;
  #sink: EventSink | undefined;
  #loop: Promise<void> | undefined;
  #stopped = false;
  #abort = new AbortController();
  #wake: (() => void) | undefined;
  readonly #decoder: PayloadDecoder;
  readonly #sequencers = new Map<number, Sequencer>();
  readonly #diag: SourceDiagnostics;
  readonly #counters: TrtllmPollSourceStats;

  constructor(options: TrtllmPollSourceOptions) {
    this.workerId = options.workerId;
    this.#opts = options;
    this.#url = `${options.url.replace(/\/+$/, '')}/kv_cache_events`;
    this.#now = options.now ?? Date.now;
    this.#intervalMs = options.intervalMs ?? 100;
    this.#diag = new SourceDiagnostics(options.workerId, options.log, this.#now);
    this.#decoder = createDecoder(options.format ?? 'trtllm-json', { blockSize: options.blockSize, now: this.#now });
    this.#counters = { ...initialStats(this.#url), failures: 0 };
  }

  async start(sink: EventSink): Promise<void> {
    if (this.#loop) throw new Error(`event source for ${this.workerId} already started`);
    this.#sink = sink;
    this.#loop = this.#run();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#abort.abort();
    this.#wake?.();
    await this.#loop;
    this.#counters.connected = false;
  }

  stats(): TrtllmPollSourceStats {
    let gaps = 0;
    let restarts = 0;
    for (const s of this.#sequencers.values()) {
      const q = s.stats();
      gaps += q.gaps;
      restarts += q.restarts;
    }
    const d = this.#diag;
    return {
      ...this.#counters,
      gaps,
      restarts,
      skippedByReason: { ...d.skipped },
      eventsSkipped: d.skippedTotal,
      suppressedWarnings: d.suppressedWarnings,
    };
  }

  /** Nothing to replay from: trtllm-serve's queue is drained by each poll. */
  probe(): void {
    this.#wake?.();
  }

  async #run(): Promise<void> {
    while (!this.#stopped) {
      let delay = this.#intervalMs;
      try {
        await this.#pollOnce();
        this.#counters.failures = 0;
        this.#counters.connected = true;
      } catch (err) {
        if (this.#stopped) return;
        this.#counters.connected = false;
        const failures = ++this.#counters.failures;
        delay = Math.min(this.#intervalMs * 2 ** Math.min(failures, 16), this.#opts.maxBackoffMs ?? 5000);
        // First failure, then every 20th: a worker that is down must not flood the log.
        if (failures === 1 || failures % 20 === 0) {
          this.#opts.log?.warn(
            { worker: this.workerId, url: this.#url, failures, err: (err as Error).message },
            'kv_cache_events poll failed',
          );
        }
      }
      if (this.#stopped) return;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = undefined;
    }
  }

  async #pollOnce(): Promise<void> {
    const timeout = this.#opts.requestTimeoutMs ?? 2000;
    const res = await request(this.#url, {
      method: 'POST',
      signal: this.#abort.signal,
      headersTimeout: timeout,
      bodyTimeout: timeout,
    });
    const text = await res.body.text();
    if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode}: ${text.slice(0, 200)}`);
    let decoded;
    try {
      decoded = this.#decoder.decode(text, null);
    } catch (err) {
      if (!(err instanceof KvDecodeError)) throw err;
      this.#counters.decodeErrors++;
      this.#diag.warn({ err: err.message }, 'undecodable kv_cache_events response skipped');
      return;
    }
    this.#diag.addSkips(decoded.skipped);
    for (const batch of decoded.batches) {
      if (this.#stopped) return;
      this.#sequencerFor(batch.dataParallelRank).push({ seq: batch.seq, batch });
      this.#counters.lastSeq = batch.seq;
      this.#counters.lastBatchAt = this.#now();
    }
  }

  /** Each attention-DP rank numbers its own events. */
  #sequencerFor(rank: number | null): Sequencer {
    const key = rank ?? -1;
    let s = this.#sequencers.get(key);
    if (!s) {
      s = new Sequencer({
        workerId: this.workerId,
        rank,
        log: this.#opts.log,
        deliver: (item) => this.#deliver(item.batch),
        reset: (reason) => {
          this.#counters.resets++;
          // A gap is the engine's bounded queue overflowing; a restart resets every rank's numbering anyway.
          for (const other of this.#sequencers.values()) if (other !== s) other.forget();
          this.#resetSink(reason);
        },
      });
      this.#sequencers.set(key, s);
    }
    return s;
  }

  #deliver(batch: KvEventBatch | null): void {
    // Empty batches stand for created/updated events: they only keep the ids contiguous.
    if (this.#stopped || batch === null || batch.events.length === 0) return;
    this.#counters.batchesApplied++;
    try {
      this.#sink?.apply(batch);
    } catch (err) {
      this.#opts.log?.error({ worker: this.workerId, err }, 'kv event sink failed to apply a batch');
    }
  }

  #resetSink(reason: string): void {
    try {
      this.#sink?.reset(reason);
    } catch (err) {
      this.#opts.log?.error({ worker: this.workerId, err }, 'kv event sink failed to reset');
    }
  }
}
