import type { Logger } from 'pino';
import type { KvEventBatch } from './types.js';

/** A batch by seq; `batch` is null when its payload could not be decoded (it still takes its seq). */
export interface SequencedItem {
  readonly seq: bigint;
  readonly batch: KvEventBatch | null;
  /** The raw payload, kept for the last applied batch so a replay can prove it continues our history. */
  readonly payload?: Uint8Array;
}

/**
 * A transport's replay channel (vLLM/SGLang ROUTER socket). `replay` asks for
 * every buffered batch from `from` on, hands each to `onItem` in order, and
 * resolves when the engine says it is done. It rejects on failure and must
 * stop promptly once `signal` aborts (timeout, stop, superseded).
 */
export interface Replayer {
  replay(from: bigint, onItem: (item: SequencedItem) => void, signal: AbortSignal): Promise<void>;
}

export interface SequencerOptions {
  workerId: string;
  /** Data-parallel rank this sequence belongs to, for the reset (null: the whole worker). */
  rank?: number | null | undefined;
  replayer?: Replayer | undefined;
  /** How long a replay may go without sending a batch before we give up; default 2000 ms. */
  replayTimeoutMs?: number | undefined;
  deliver(item: SequencedItem, replayed: boolean): void;
  reset(reason: string): void;
  log?: Logger | undefined;
}

export interface SequencerStats {
  lastSeq: bigint | null;
  gaps: number;
  resets: number;
  batchesReplayed: number;
  /** Restarts noticed: the sequence went backwards, or a replay's history did not continue ours. */
  restarts: number;
  /** Replays that brought batches we had missed (late join, gap, probe after a quiet loss or a health blip). */
  catchUps: number;
  /** Probes sent (reconnect, health recovery, periodic). */
  probes: number;
  /** `Date.now()` of the last confirmed catch-up, null before the first. */
  lastCatchUpAt: number | null;
  /** Live batches skipped because a replay had already delivered them (the replay socket outran the live one). */
  liveDuplicates: number;
}

interface Session {
  from: bigint;
  /** gap: we lost batches. catchup: we joined late. probe: check nothing was lost at the end or the engine restarted. */
  mode: 'gap' | 'catchup' | 'probe';
  abort: AbortController;
  timer: NodeJS.Timeout;
  /** For a probe: the first replayed item must be our last batch again, byte for byte. */
  verify: Uint8Array | null;
  verified: boolean;
  /** Batches this session delivered that we had not seen. */
  recovered: number;
}

/** Live batches held while a replay runs; past this the replay is abandoned. */
const MAX_HELD = 100_000;

const bySeq = (a: SequencedItem, b: SequencedItem) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0);

/**
 * Orders one publisher's batches (one worker, or one data-parallel rank of it)
 * and hides loss from the index; every event source uses one per sequence.
 *
 * seq == last+1 is delivered; a jump forward is a gap, filled from the
 * replayer while newer live batches wait; a seq that does not move forward
 * means the publisher restarted (vLLM counts from 0 per process). Without a
 * replayer, or when the engine no longer buffers what we lost, the index is
 * reset and the new batch is the baseline.
 *
 * A restart whose first batches we missed looks like a plain gap (the new
 * process's numbers can be above ours), so `probe()` replays from our last
 * seq instead of last+1: the engine must send our last batch back byte for
 * byte, or its history is not ours. Sources probe on reconnect, when the
 * worker comes back from a health failure, and periodically (which also
 * finds a batch lost at the end of a quiet period).
 */
export class Sequencer {
  readonly #opts: SequencerOptions;
  readonly #replayTimeoutMs: number;
  #last: bigint | null = null;
  #lastPayload: Uint8Array | null = null;
  #session: Session | null = null;
  #held: SequencedItem[] = [];
  /** Set while draining after a failed replay, so a new baseline does not immediately ask again. */
  #suppressed = false;
  #stopped = false;
  readonly #counters: SequencerStats = {
    lastSeq: null,
    gaps: 0,
    resets: 0,
    batchesReplayed: 0,
    restarts: 0,
    catchUps: 0,
    probes: 0,
    lastCatchUpAt: null,
    liveDuplicates: 0,
  };
  /** Seq of the last batch received live (not through a replay), null before the first. */
  #lastLive: bigint | null = null;

  constructor(options: SequencerOptions) {
    this.#opts = options;
    this.#replayTimeoutMs = options.replayTimeoutMs ?? 2000;
  }

  get lastSeq(): bigint | null {
    return this.#last;
  }

  get replaying(): boolean {
    return this.#session !== null;
  }

  stats(): SequencerStats {
    return { ...this.#counters, lastSeq: this.#last };
  }

  stop(): void {
    this.#stopped = true;
    if (this.#session) this.#endSession(this.#session);
    this.#session = null;
    this.#held = [];
  }

  /** Drops our position without resetting the index: the next batch is a new baseline (another sequence reset the index). */
  forget(): void {
    this.#last = null;
    this.#lastPayload = null;
  }

  /** A batch received live. */
  push(item: SequencedItem): void {
    const previousLive = this.#lastLive;
    this.#lastLive = item.seq;
    this.#accept(item, previousLive);
  }

  /**
   * `previousLive`: the live stream's seq before this batch (null: none yet);
   * undefined for held batches drained after a replay, which were checked on arrival.
   */
  #accept(item: SequencedItem, previousLive?: bigint | null): void {
    if (this.#stopped) return;
    if (this.#session) {
      this.#held.push(item);
      if (this.#held.length > MAX_HELD) this.#finish(this.#session, 'too many batches arrived while replaying');
      return;
    }
    const last = this.#last;
    if (last === null) return this.#baseline(item);
    if (item.seq === last + 1n) return this.#deliver(item, false);
    if (item.seq <= last) {
      // A replay (a probe, or a gap's) can deliver batches before the live socket does, so the
      // live stream then moves forward over seqs we already applied: those are duplicates. A
      // restarted engine counts from 0 again, i.e. below what the live stream last showed.
      if (previousLive !== undefined && (previousLive === null || item.seq > previousLive)) {
        this.#counters.liveDuplicates++;
        return;
      }
      this.#counters.restarts++;
      this.#doReset(`sequence went backwards from ${last} to ${item.seq} (publisher restarted)`);
      return this.#baseline(item);
    }
    this.#counters.gaps++;
    if (this.#opts.replayer !== undefined && !this.#suppressed) {
      this.#opts.log?.warn(
        { worker: this.#opts.workerId, from: (last + 1n).toString(), to: item.seq.toString() },
        'kv event gap, requesting replay',
      );
      this.#held.push(item);
      // From `last`, not last+1: the gap may be a restart whose first batches we missed.
      this.#start(last, 'gap');
      return;
    }
    this.#doReset(`kv event gap: seq jumped from ${last} to ${item.seq}, batches lost and no replay available`);
    this.#baseline(item);
  }

  /**
   * Asks the engine whether anything came after our last batch, and whether it
   * is still the process that sent it. A no-op without a replayer or while a
   * replay runs. Before the first batch it is a catch-up from 0.
   */
  probe(): void {
    if (this.#stopped || this.#session || this.#opts.replayer === undefined) return;
    this.#counters.probes++;
    if (this.#last === null) this.#start(0n, 'catchup');
    else this.#start(this.#last, 'probe');
  }

  #baseline(item: SequencedItem): void {
    if (item.seq > 0n && this.#opts.replayer !== undefined && !this.#suppressed) {
      this.#held.push(item);
      this.#start(0n, 'catchup');
      return;
    }
    this.#deliver(item, false);
  }

  #deliver(item: SequencedItem, replayed: boolean): void {
    if (this.#stopped) return;
    this.#last = item.seq;
    this.#lastPayload = item.payload ?? null;
    // Only batches we never received live count as replayed; the replay also resends the held ones.
    if (replayed && !(this.#held.length > 0 && item.seq >= this.#held[0]!.seq)) {
      if (this.#session) this.#session.recovered++;
      if (item.batch) this.#counters.batchesReplayed++;
    }
    this.#opts.deliver(item, replayed);
  }

  #doReset(reason: string): void {
    this.#counters.resets++;
    this.#last = null;
    this.#lastPayload = null;
    this.#opts.log?.warn({ worker: this.#opts.workerId, rank: this.#opts.rank, reason }, 'kv index reset for worker');
    this.#opts.reset(reason);
  }

  #start(from: bigint, mode: Session['mode']): void {
    const verify = from === this.#last && this.#last !== null ? this.#lastPayload : null;
    const session: Session = {
      from,
      mode,
      abort: new AbortController(),
      timer: setTimeout(
        () => this.#finish(session, `replay sent nothing for ${this.#replayTimeoutMs} ms`),
        this.#replayTimeoutMs,
      ),
      verify,
      verified: false,
      recovered: 0,
    };
    this.#session = session;
    this.#opts
      .replayer!.replay(from, (item) => this.#onReplayed(session, item), session.abort.signal)
      .then(
        () => this.#finish(session, null),
        (err: unknown) => this.#finish(session, `replay failed: ${(err as Error).message}`),
      );
  }

  #onReplayed(session: Session, item: SequencedItem): void {
    if (this.#session !== session || this.#stopped) return;
    // A catch-up from 0 resends the engine's whole buffer (vLLM keeps 10,000 batches), which on a
    // busy gateway takes longer than the timeout: give up on silence, not on the total time.
    session.timer.refresh();
    const last = this.#last;
    const checking = session.mode !== 'catchup' && !session.verified;
    if (checking && item.seq === last) {
      // Our last batch again: the same bytes prove the same process (when we kept them).
      if (session.verify === null || (item.payload !== undefined && equalBytes(item.payload, session.verify))) {
        session.verified = true;
        return;
      }
      return this.#restarted(session, `replayed batch ${last} differs from ours`);
    }
    if (checking && last !== null && item.seq > last) {
      return this.#restarted(session, `replay from ${last} started at ${item.seq}`, item);
    }
    if (last === null) return this.#deliver(item, true);
    if (item.seq <= last) return; // already applied (or the held live copy will be skipped later)
    if (item.seq === last + 1n) return this.#deliver(item, true);
    this.#doReset(
      `replay from ${session.from} started at ${item.seq}: batches ${last + 1n}..${item.seq - 1n} are gone`,
    );
    this.#deliver(item, true);
  }

  /**
   * The engine's history does not continue ours: either it restarted, or its
   * buffer no longer reaches back to our last batch. Both mean the index may
   * hold blocks the engine does not; clear it and learn the new history from 0.
   */
  #restarted(session: Session, why: string, first?: SequencedItem): void {
    this.#counters.restarts++;
    this.#doReset(`engine history does not continue ours (${why}): restarted or replay buffer overrun`);
    this.#endSession(session);
    this.#session = null;
    if (first) this.#held.push(first);
    this.#start(0n, 'catchup');
  }

  /** Ends the session; `failure` null means the end marker arrived. Then the held live batches are processed. */
  #finish(session: Session, failure: string | null): void {
    if (this.#session !== session) return;
    this.#session = null;
    this.#endSession(session);
    if (failure !== null) {
      this.#opts.log?.warn(
        { worker: this.#opts.workerId, rank: this.#opts.rank, mode: session.mode, reason: failure },
        'kv event replay failed',
      );
      // A late joiner or a probe has lost nothing it knows of; a gap means the index is missing batches.
      if (session.mode === 'gap') this.#doReset(failure);
      this.#suppressed = true;
    } else if (session.mode !== 'catchup' && !session.verified) {
      // The engine answered without our last batch and with nothing newer: a fresh process.
      return this.#restarted(session, `replay from ${session.from} returned nothing`);
    } else if (session.recovered > 0) {
      this.#counters.catchUps++;
      this.#counters.lastCatchUpAt = Date.now();
    }
    const held = this.#held.sort(bySeq);
    this.#held = [];
    // Whatever the drain finds missing now, the engine could not give us: no second replay for it.
    this.#suppressed = true;
    try {
      for (let i = 0; i < held.length; i++) {
        if (this.#session) {
          this.#held.push(...held.slice(i));
          break;
        }
        const last = this.#last;
        if (last !== null && held[i]!.seq <= last) continue; // came in through the replay already
        this.#accept(held[i]!);
      }
    } finally {
      this.#suppressed = false;
    }
  }

  #endSession(session: Session): void {
    clearTimeout(session.timer);
    session.abort.abort();
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.length).equals(b);
}
