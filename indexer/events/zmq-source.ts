import type { Logger } from 'pino';
import { Dealer, Subscriber } from 'zeromq';
import { MAX_PLAUSIBLE_SEQ, SourceDiagnostics } from './diagnostics.js';
import { createDecoder, type PayloadDecoder, type PayloadFormat } from './formats.js';
import { Sequencer, type Replayer, type SequencedItem } from './sequencer.js';
import { initialStats, type EventSink, type EventSource, type EventSourceStats } from './source.js';

export interface ZmqEventSourceOptions {
  workerId: string;
  /** The engine's PUB endpoint (connect mode, e.g. tcp://worker:5557) or ours to bind (bind mode). */
  endpoint: string;
  /** The engine's ROUTER replay endpoint; without it a gap clears the worker's index. */
  replayEndpoint?: string | undefined;
  /** Subscription prefix on frame 0; default '' (everything). */
  topic?: string | undefined;
  /** connect (default): we connect to a binding engine. bind: the engine connects to us. */
  mode?: 'connect' | 'bind' | undefined;
  /** Data-parallel rank this stream belongs to (one subscription per rank); its batches are that rank's. */
  rank?: number | undefined;
  /** Payload format of frame 3; default msgpack. */
  format?: PayloadFormat | undefined;
  /** How long a replay may take before we give up and reset; default 2000 ms. */
  replayTimeoutMs?: number | undefined;
  /**
   * Period of the replay probe while connected (0: off); default 5000 ms. It
   * bounds how long a batch lost at the end of a quiet period, or a restart
   * that left the sequence above ours, stays unnoticed: one period plus one
   * replay round trip.
   */
  probeIntervalMs?: number | undefined;
  log?: Logger | undefined;
  now?: (() => number) | undefined;
}

export type ZmqEventSourceStats = EventSourceStats;

const END_SEQ = Buffer.alloc(8, 0xff);

function seq8(seq: bigint): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(seq);
  return b;
}

/**
 * Subscribes to one engine's ZMQ KV event stream (vLLM, SGLang, TRT-LLM's
 * vLLM-compatible publisher). Ordering, gaps, replay and restarts are the
 * Sequencer's; this file is the transport: the SUB socket for live batches and
 * a DEALER to the engine's ROUTER for replays (REQ cannot receive a
 * multi-message reply).
 */
export class ZmqEventSource implements EventSource {
  readonly workerId: string;
  readonly #opts: ZmqEventSourceOptions;
  readonly #now: () => number;
  readonly #decoder: PayloadDecoder;
  readonly #sequencer: Sequencer;
  readonly #diag: SourceDiagnostics;
  #probeTimer: NodeJS.Timeout | undefined;
  // TS-private, not #private: test/indexer/events/zmq-source.test.ts reads the socket's endpoint.
  // eslint-disable-next-line no-restricted-syntax
  private sub: Subscriber | undefined;
  #sink: EventSink | undefined;
  #loop: Promise<void> | undefined;
  #stopped = false;
  readonly #counters: ZmqEventSourceStats;

  constructor(options: ZmqEventSourceOptions) {
    this.workerId = options.workerId;
    this.#opts = options;
    this.#now = options.now ?? Date.now;
    this.#decoder = createDecoder(options.format ?? 'msgpack');
    this.#diag = new SourceDiagnostics(options.workerId, options.log, this.#now);
    const replayer = options.replayEndpoint === undefined ? undefined : this.#replayer(options.replayEndpoint);
    this.#sequencer = new Sequencer({
      workerId: options.workerId,
      rank: options.rank ?? null,
      replayer,
      replayTimeoutMs: options.replayTimeoutMs,
      log: options.log,
      deliver: (item) => this.#deliver(item),
      reset: (reason) => this.#resetSink(reason),
    });
    this.#counters = initialStats(options.endpoint);
  }

  /** Never waits for the engine: ZMQ connects (and reconnects) in the background. Bind errors do throw. */
  async start(sink: EventSink): Promise<void> {
    if (this.sub) throw new Error(`event source for ${this.workerId} already started`);
    this.#sink = sink;
    const sub = new Subscriber({ linger: 0, receiveHighWaterMark: 100_000 });
    this.sub = sub;
    sub.events.on('connect', () => {
      this.#counters.connected = true;
      // A (re)connect is where batches get lost and where a restarted engine shows up: check at once.
      this.#sequencer.probe();
    });
    sub.events.on('accept', () => {
      this.#counters.connected = true;
    });
    sub.events.on('disconnect', () => {
      this.#counters.connected = false;
    });
    sub.subscribe(this.#opts.topic ?? '');
    try {
      if (this.#opts.mode === 'bind') await sub.bind(this.#opts.endpoint);
      else sub.connect(this.#opts.endpoint);
    } catch (err) {
      sub.close();
      throw err;
    }
    this.#loop = this.#receiveLoop(sub);
    const every = this.#opts.probeIntervalMs ?? 5000;
    if (every > 0 && this.#opts.replayEndpoint !== undefined) {
      this.#probeTimer = setInterval(() => {
        if (this.#counters.connected) this.#sequencer.probe();
      }, every);
      this.#probeTimer.unref();
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#probeTimer);
    this.#sequencer.stop();
    if (this.sub && !this.sub.closed) this.sub.close();
    this.#counters.connected = false;
    await this.#loop;
  }

  /** Asks the engine for anything after our last batch, and whether it is still the same process. */
  probe(): void {
    this.#sequencer.probe();
  }

  stats(): ZmqEventSourceStats {
    const s = this.#sequencer.stats();
    const d = this.#diag;
    return {
      ...this.#counters,
      lastSeq: s.lastSeq,
      gaps: s.gaps,
      resets: s.resets,
      batchesReplayed: s.batchesReplayed,
      restarts: s.restarts,
      catchUps: s.catchUps,
      lastCatchUpAt: s.lastCatchUpAt,
      probes: s.probes,
      liveDuplicates: s.liveDuplicates,
      skippedByReason: { ...d.skipped },
      eventsSkipped: d.skippedTotal,
      suppressedWarnings: d.suppressedWarnings,
      ignoredTimestamps: d.ignoredTimestamps,
    };
  }

  async #receiveLoop(sub: Subscriber): Promise<void> {
    while (!this.#stopped) {
      let frames: Buffer[];
      try {
        frames = await sub.receive();
      } catch (err) {
        if (!this.#stopped) this.#opts.log?.error({ worker: this.workerId, err }, 'kv event subscriber failed');
        return;
      }
      if (frames.length !== 3 || frames[1]!.length !== 8) {
        this.#counters.decodeErrors++;
        continue;
      }
      const seq = frames[1]!.readBigUInt64BE();
      if (seq > MAX_PLAUSIBLE_SEQ) {
        // Taking it would make every later batch look like a restart.
        this.#diag.skip('bad-seq');
        this.#diag.warn({ seq: seq.toString() }, 'kv event batch with an impossible sequence number skipped');
        continue;
      }
      const item = this.#decode(seq, frames[2]!);
      if (item.batch) {
        this.#counters.lastBatchAt = this.#now();
        const lag = this.#diag.lagMs(this.#counters.lastBatchAt, item.batch.ts);
        if (lag !== null) this.#counters.lagMs = lag;
      }
      this.#sequencer.push(item);
    }
  }

  #decode(seq: bigint, payload: Buffer): SequencedItem {
    try {
      const d = this.#decoder.decode(payload, seq);
      this.#diag.addSkips(d.skipped);
      const batch = d.batches[0] ?? null;
      const rank = this.#opts.rank;
      return { seq, batch: batch && rank !== undefined ? { ...batch, dataParallelRank: rank } : batch, payload };
    } catch (err) {
      this.#counters.decodeErrors++;
      this.#diag.warn({ seq: seq.toString(), err: (err as Error).message }, 'undecodable kv event batch skipped');
      return { seq, batch: null, payload };
    }
  }

  #deliver(item: SequencedItem): void {
    if (this.#stopped || !item.batch) return;
    this.#counters.batchesApplied++;
    try {
      this.#sink?.apply(item.batch);
    } catch (err) {
      this.#opts.log?.error({ worker: this.workerId, err }, 'kv event sink failed to apply a batch');
    }
  }

  #resetSink(reason: string): void {
    try {
      if (this.#opts.rank === undefined) this.#sink?.reset(reason);
      else this.#sink?.reset(reason, this.#opts.rank);
    } catch (err) {
      this.#opts.log?.error({ worker: this.workerId, err }, 'kv event sink failed to reset');
    }
  }

  /**
   * Replies are [delimiter, seq8, payload] (vLLM <= 0.2x, SGLang) or
   * [delimiter, topic, seq8, payload] (newer vLLM, TRT-LLM): the last two
   * frames are always seq and payload; seq ff*8 with an empty payload ends it.
   */
  #replayer(endpoint: string): Replayer {
    const sendTimeout = this.#opts.replayTimeoutMs ?? 2000;
    return {
      replay: async (from, onItem, signal) => {
        const dealer = new Dealer({ linger: 0, sendTimeout });
        const close = () => {
          if (!dealer.closed) dealer.close();
        };
        signal.addEventListener('abort', close);
        try {
          dealer.connect(endpoint);
          // DEALER must send REQ's empty delimiter itself: the ROUTER sees [identity, "", start_seq].
          await dealer.send([Buffer.alloc(0), seq8(from)]);
          while (!signal.aborted) {
            const frames = await dealer.receive();
            if (signal.aborted || frames.length < 2) continue;
            const seqFrame = frames[frames.length - 2]!;
            if (seqFrame.length !== 8) continue;
            if (seqFrame.equals(END_SEQ)) return;
            onItem(this.#decode(seqFrame.readBigUInt64BE(), frames[frames.length - 1]!));
          }
        } catch (err) {
          if (!signal.aborted) throw err;
        } finally {
          signal.removeEventListener('abort', close);
          close();
        }
      },
    };
  }
}
