import type { Logger } from 'pino';
import { Dealer, Subscriber } from 'zeromq';
import { decodeKvBatchPayload } from './decode-msgpack.js';
import type { EventSink, EventSource, EventSourceStats } from './source.js';
import type { KvEventBatch } from './types.js';

export interface ZmqEventSourceOptions {
  workerId: string;
  /** The engine's PUB endpoint (connect mode, e.g. tcp://worker:5557) or ours to bind (bind mode). */
  endpoint: string;
  /** The engine's ROUTER replay endpoint; without it a gap clears the worker's index. */
  replayEndpoint?: string | undefined;
  /** Subscription prefix on frame 0; default '' (everything). */
  topic?: string;
  /** connect (default): we connect to a binding engine. bind: the engine connects to us. */
  mode?: 'connect' | 'bind';
  /** How long a replay may take before we give up and reset; default 2000 ms. */
  replayTimeoutMs?: number;
  log?: Logger | undefined;
  now?: (() => number) | undefined;
}

export interface ZmqEventSourceStats extends EventSourceStats {
  /** Events the decoder dropped on purpose (other medium, remote, unknown type, malformed). */
  eventsSkipped: number;
}

/** A batch by seq; `batch` is null when its payload could not be decoded (it still takes its seq). */
interface Item {
  seq: bigint;
  batch: KvEventBatch | null;
}

interface ReplaySession {
  from: bigint;
  /** gap: we had state and lost batches. catchup: we joined late and want the engine's history. */
  mode: 'gap' | 'catchup';
  dealer: Dealer;
  timer: NodeJS.Timeout;
}

const END_SEQ = Buffer.alloc(8, 0xff);
/** Live batches held while a replay runs; past this the replay is abandoned. */
const MAX_HELD = 100_000;

function seq8(seq: bigint): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(seq);
  return b;
}

/**
 * Subscribes to one engine's ZMQ KV event stream (vLLM, SGLang, TRT-LLM's
 * vLLM-compatible publisher) and delivers batches to the sink strictly in
 * sequence order.
 *
 * Sequence handling: seq == last+1 is applied; a jump forward is a gap,
 * filled by asking the engine's ROUTER to replay from last+1 over a DEALER
 * (REQ cannot receive a multi-message reply) while newer live batches wait.
 * If replay is missing, slow, or the engine no longer buffers the lost
 * batches, the sink is reset and we continue from what we have. A seq that
 * does not move forward means the publisher restarted (vLLM counts from 0
 * per process): reset and take it as the new baseline.
 *
 * Late join: when the first batch we see has seq > 0 and a replay endpoint is
 * known, we replay from 0 first, so a gateway started after the engine learns
 * the blocks cached before it arrived (as far as the engine's buffer reaches).
 */
export class ZmqEventSource implements EventSource {
  readonly workerId: string;
  private readonly opts: ZmqEventSourceOptions;
  private readonly now: () => number;
  private readonly replayTimeoutMs: number;
  private sub: Subscriber | undefined;
  private sink: EventSink | undefined;
  private loop: Promise<void> | undefined;
  private stopped = false;
  private lastSeq: bigint | null = null;
  private replay: ReplaySession | null = null;
  private held: Item[] = [];
  /** Set while draining after a failed replay, so a new baseline does not immediately ask again. */
  private replaySuppressed = false;
  private readonly counters: ZmqEventSourceStats;

  constructor(options: ZmqEventSourceOptions) {
    this.workerId = options.workerId;
    this.opts = options;
    this.now = options.now ?? Date.now;
    this.replayTimeoutMs = options.replayTimeoutMs ?? 2000;
    this.counters = {
      endpoint: options.endpoint,
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
    };
  }

  /** Never waits for the engine: ZMQ connects (and reconnects) in the background. Bind errors do throw. */
  async start(sink: EventSink): Promise<void> {
    if (this.sub) throw new Error(`event source for ${this.workerId} already started`);
    this.sink = sink;
    const sub = new Subscriber({ linger: 0, receiveHighWaterMark: 100_000 });
    this.sub = sub;
    sub.events.on('connect', () => {
      this.counters.connected = true;
    });
    sub.events.on('accept', () => {
      this.counters.connected = true;
    });
    sub.events.on('disconnect', () => {
      this.counters.connected = false;
    });
    sub.subscribe(this.opts.topic ?? '');
    try {
      if (this.opts.mode === 'bind') await sub.bind(this.opts.endpoint);
      else sub.connect(this.opts.endpoint);
    } catch (err) {
      sub.close();
      throw err;
    }
    this.loop = this.receiveLoop(sub);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.replay) this.closeSession(this.replay);
    this.replay = null;
    this.held = [];
    if (this.sub && !this.sub.closed) this.sub.close();
    this.counters.connected = false;
    await this.loop;
  }

  stats(): ZmqEventSourceStats {
    return { ...this.counters, lastSeq: this.lastSeq };
  }

  private async receiveLoop(sub: Subscriber): Promise<void> {
    while (!this.stopped) {
      let frames: Buffer[];
      try {
        frames = await sub.receive();
      } catch (err) {
        if (!this.stopped) this.opts.log?.error({ worker: this.workerId, err }, 'kv event subscriber failed');
        return;
      }
      if (frames.length !== 3 || frames[1]!.length !== 8) {
        this.counters.decodeErrors++;
        continue;
      }
      const item = this.decode(frames[1]!.readBigUInt64BE(), frames[2]!);
      if (item.batch) {
        this.counters.lastBatchAt = this.now();
        this.counters.lagMs = this.counters.lastBatchAt - item.batch.ts * 1000;
      }
      this.onLive(item);
    }
  }

  private decode(seq: bigint, payload: Buffer): Item {
    try {
      const d = decodeKvBatchPayload(payload);
      this.counters.eventsSkipped += d.skipped;
      return { seq, batch: { seq, ts: d.ts, dataParallelRank: d.dataParallelRank, events: d.events } };
    } catch (err) {
      this.counters.decodeErrors++;
      this.opts.log?.warn(
        { worker: this.workerId, seq: seq.toString(), err: (err as Error).message },
        'undecodable kv event batch skipped',
      );
      return { seq, batch: null };
    }
  }

  private onLive(item: Item): void {
    if (this.stopped) return;
    if (this.replay) {
      this.held.push(item);
      if (this.held.length > MAX_HELD) this.finishReplay(this.replay, 'too many batches arrived while replaying');
      return;
    }
    const last = this.lastSeq;
    if (last === null) return this.baseline(item);
    if (item.seq === last + 1n) return this.apply(item, false);
    if (item.seq <= last) {
      this.reset(`sequence went backwards from ${last} to ${item.seq} (publisher restarted)`);
      return this.baseline(item);
    }
    this.counters.gaps++;
    if (this.opts.replayEndpoint !== undefined && !this.replaySuppressed) {
      this.opts.log?.warn(
        { worker: this.workerId, from: (last + 1n).toString(), to: item.seq.toString() },
        'kv event gap, requesting replay',
      );
      this.held.push(item);
      this.startReplay(last + 1n, 'gap');
      return;
    }
    this.reset(`kv event gap: batches ${last + 1n}..${item.seq - 1n} lost and no replay available`);
    this.baseline(item);
  }

  private baseline(item: Item): void {
    if (item.seq > 0n && this.opts.replayEndpoint !== undefined && !this.replaySuppressed) {
      this.held.push(item);
      this.startReplay(0n, 'catchup');
      return;
    }
    this.apply(item, false);
  }

  private apply(item: Item, replayed: boolean): void {
    if (this.stopped) return;
    this.lastSeq = item.seq;
    if (!item.batch) return;
    this.counters.batchesApplied++;
    // Only batches we never received live count as replayed; the replay also resends the held ones.
    if (replayed && !(this.held.length > 0 && item.seq >= this.held[0]!.seq)) this.counters.batchesReplayed++;
    try {
      this.sink?.apply(item.batch);
    } catch (err) {
      this.opts.log?.error({ worker: this.workerId, err }, 'kv event sink failed to apply a batch');
    }
  }

  private reset(reason: string): void {
    this.counters.resets++;
    this.lastSeq = null;
    this.opts.log?.warn({ worker: this.workerId, reason }, 'kv index reset for worker');
    try {
      this.sink?.reset(reason);
    } catch (err) {
      this.opts.log?.error({ worker: this.workerId, err }, 'kv event sink failed to reset');
    }
  }

  private startReplay(from: bigint, mode: ReplaySession['mode']): void {
    const dealer = new Dealer({ linger: 0, sendTimeout: this.replayTimeoutMs });
    const session: ReplaySession = {
      from,
      mode,
      dealer,
      timer: setTimeout(
        () => this.finishReplay(session, `replay timed out after ${this.replayTimeoutMs} ms`),
        this.replayTimeoutMs,
      ),
    };
    this.replay = session;
    void this.runSession(session);
  }

  private async runSession(session: ReplaySession): Promise<void> {
    const { dealer } = session;
    try {
      dealer.connect(this.opts.replayEndpoint!);
      // DEALER must send REQ's empty delimiter itself: the ROUTER sees [identity, "", start_seq].
      await dealer.send([Buffer.alloc(0), seq8(session.from)]);
      while (this.replay === session) {
        const frames = await dealer.receive();
        if (this.replay !== session) return;
        this.onReplayFrames(session, frames);
      }
    } catch (err) {
      if (this.replay === session) this.finishReplay(session, `replay failed: ${(err as Error).message}`);
    }
  }

  /**
   * Replies are [delimiter, seq8, payload] (vLLM <= 0.2x, SGLang) or
   * [delimiter, topic, seq8, payload] (newer vLLM, TRT-LLM): the last two
   * frames are always seq and payload; seq ff*8 with an empty payload ends it.
   */
  private onReplayFrames(session: ReplaySession, frames: Buffer[]): void {
    if (frames.length < 2) return;
    const seqFrame = frames[frames.length - 2]!;
    if (seqFrame.length !== 8) return;
    if (seqFrame.equals(END_SEQ)) return this.finishReplay(session, null);
    const item = this.decode(seqFrame.readBigUInt64BE(), frames[frames.length - 1]!);
    const last = this.lastSeq;
    if (last === null) return this.apply(item, true);
    if (item.seq <= last) return; // already applied (or the held live copy will be skipped later)
    if (item.seq === last + 1n) return this.apply(item, true);
    // The engine no longer buffers what we lost: start over from here.
    this.reset(`replay from ${session.from} started at ${item.seq}: batches ${last + 1n}..${item.seq - 1n} are gone`);
    this.apply(item, true);
  }

  /** Ends the session; `failure` null means the end marker arrived. Then the held live batches are processed. */
  private finishReplay(session: ReplaySession, failure: string | null): void {
    if (this.replay !== session) return;
    this.replay = null;
    this.closeSession(session);
    if (failure !== null) {
      this.opts.log?.warn({ worker: this.workerId, mode: session.mode, reason: failure }, 'kv event replay failed');
      // A late joiner has nothing to clear; a gap means the index is missing batches.
      if (session.mode === 'gap') this.reset(failure);
      this.replaySuppressed = true;
    }
    const held = this.held.sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
    this.held = [];
    try {
      for (let i = 0; i < held.length; i++) {
        if (this.replay) {
          this.held.push(...held.slice(i));
          break;
        }
        const last = this.lastSeq;
        if (last !== null && held[i]!.seq <= last) continue; // came in through the replay already
        this.onLive(held[i]!);
      }
    } finally {
      this.replaySuppressed = false;
    }
  }

  private closeSession(session: ReplaySession): void {
    clearTimeout(session.timer);
    if (!session.dealer.closed) session.dealer.close();
  }
}
