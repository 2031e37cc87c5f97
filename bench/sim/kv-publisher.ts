import { Publisher, Router } from 'zeromq';
import type { KvEvent } from '../../indexer/events/types.js';
import { encodeVllmBatch } from './kv-encode.js';

export { encodeVllmBatch } from './kv-encode.js';

export interface KvPublisherOptions {
  /** vLLM semantics: PUB binds if the endpoint contains '*' or '::' or starts with ipc:// or inproc://, else connects. */
  endpoint: string;
  /** Binds even without vLLM's marks: a rank of a wildcard-port endpoint, given its port. */
  bind?: boolean | undefined;
  /** ROUTER for replay requests; always binds. */
  replayEndpoint?: string | undefined;
  /** Frame 0 of every message; default ''. */
  topic?: string | undefined;
  /** current = vLLM >= 0.24 tagged-map inner events; legacy = vLLM <= 0.23 positional arrays. */
  format?: 'current' | 'legacy' | undefined;
  /** Stamped into every batch; default 0 (vLLM stamps its DP rank). */
  dataParallelRank?: number | null;
  /** Batches kept for replay, default 10_000 (vLLM's buffer_steps). */
  bufferSteps?: number;
  /** ms clock for the batch ts (seconds float on the wire), default Date.now. */
  now?: () => number;
}

/** seq = -1 as signed 8-byte big-endian: vLLM's END_SEQ that closes a replay. */
const END_SEQ = Buffer.alloc(8, 0xff);
const EMPTY = Buffer.alloc(0);

function seqBytes(seq: bigint): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(seq);
  return b;
}

/** vLLM's `ZmqEventPublisher` rule for whether the PUB socket binds or connects. */
function pubBinds(endpoint: string): boolean {
  return (
    endpoint.includes('*') ||
    endpoint.includes('::') ||
    endpoint.startsWith('ipc://') ||
    endpoint.startsWith('inproc://')
  );
}

/** `tcp://0.0.0.0:P` is where we listen, not where a subscriber can connect. */
function connectable(endpoint: string): string {
  return endpoint.replace('tcp://0.0.0.0:', 'tcp://127.0.0.1:').replace('tcp://[::]:', 'tcp://[::1]:');
}

type Frames = Buffer[];

/**
 * zeromq v6 allows one pending send per socket; this keeps sends in call order
 * so the synchronous `publish()` can fire and forget.
 */
class SendQueue {
  readonly #queue: Frames[] = [];
  #running = false;
  #closed = false;

  readonly #send: (frames: Frames) => Promise<void>;

  constructor(send: (frames: Frames) => Promise<void>) {
    this.#send = send;
  }

  push(frames: Frames): void {
    if (this.#closed) return;
    this.#queue.push(frames);
    if (!this.#running) void this.#pump();
  }

  close(): void {
    this.#closed = true;
    this.#queue.length = 0;
  }

  async #pump(): Promise<void> {
    this.#running = true;
    while (!this.#closed && this.#queue.length > 0) {
      const frames = this.#queue.shift()!;
      try {
        await this.#send(frames);
      } catch {
        // PUB/ROUTER without `mandatory` drop what they cannot deliver; a failed
        // send here means the socket is closing, and the subscriber detects any loss by seq.
      }
    }
    this.#running = false;
  }
}

/**
 * The simulator's stand-in for vLLM's `ZmqEventPublisher`: same frames
 * `[topic, seq8, msgpack]`, same replay protocol on a ROUTER, same payload bytes.
 */
export class KvEventPublisher {
  readonly endpoint: string;
  readonly replayEndpoint: string | undefined;

  #seq = 0n;
  #dropRemaining = 0;
  /** Ring of the last `bufferSteps` batches (array shift would be O(n) per publish). */
  readonly #ring: { seq: bigint; payload: Buffer }[] = [];
  #ringStart = 0;
  readonly #topic: Buffer;
  readonly #format: 'current' | 'legacy';
  readonly #dpRank: number | null;
  readonly #bufferSteps: number;
  readonly #now: () => number;
  readonly #pubQueue: SendQueue;
  readonly #routerQueue: SendQueue | undefined;
  #closed = false;
  #replayLoop: Promise<void> | undefined;
  readonly #pub: Publisher;
  readonly #router: Router | undefined;

  private constructor(
    pub: Publisher,
    router: Router | undefined,
    endpoint: string,
    replayEndpoint: string | undefined,
    options: KvPublisherOptions,
  ) {
    this.#pub = pub;
    this.#router = router;
    this.endpoint = endpoint;
    this.replayEndpoint = replayEndpoint;
    this.#topic = Buffer.from(options.topic ?? '', 'utf8');
    this.#format = options.format ?? 'current';
    this.#dpRank = options.dataParallelRank === undefined ? 0 : options.dataParallelRank;
    this.#bufferSteps = Math.max(0, Math.floor(options.bufferSteps ?? 10_000));
    this.#now = options.now ?? Date.now;
    this.#pubQueue = new SendQueue((frames) => pub.send(frames));
    if (router) {
      this.#routerQueue = new SendQueue((frames) => router.send(frames));
      this.#replayLoop = this.#serveReplays(router);
    }
  }

  static async open(options: KvPublisherOptions): Promise<KvEventPublisher> {
    // vLLM: hwm=100_000; linger 0 so close() never waits on a slow subscriber.
    const pub = new Publisher({ linger: 0, sendHighWaterMark: 100_000 });
    let router: Router | undefined;
    try {
      let endpoint = options.endpoint;
      if (options.bind === true || pubBinds(options.endpoint)) {
        await pub.bind(options.endpoint);
        endpoint = connectable(pub.lastEndpoint ?? options.endpoint);
      } else {
        pub.connect(options.endpoint);
      }
      let replayEndpoint: string | undefined;
      if (options.replayEndpoint !== undefined) {
        router = new Router({ linger: 0, sendHighWaterMark: 100_000 });
        await router.bind(options.replayEndpoint);
        replayEndpoint = connectable(router.lastEndpoint ?? options.replayEndpoint);
      }
      return new KvEventPublisher(pub, router, endpoint, replayEndpoint, options);
    } catch (err) {
      pub.close();
      router?.close();
      throw err;
    }
  }

  get nextSeq(): bigint {
    return this.#seq;
  }

  /** Publishes one batch (one scheduler step). An empty list publishes nothing. */
  publish(events: readonly KvEvent[]): void {
    if (this.#closed || events.length === 0) return;
    const payload = encodeVllmBatch({ ts: this.#now() / 1000, events, dataParallelRank: this.#dpRank }, this.#format);
    const seq = this.#seq++;
    if (this.#ring.length < this.#bufferSteps) {
      this.#ring.push({ seq, payload });
    } else if (this.#bufferSteps > 0) {
      this.#ring[this.#ringStart] = { seq, payload };
      this.#ringStart = (this.#ringStart + 1) % this.#bufferSteps;
    }
    if (this.#dropRemaining > 0) {
      this.#dropRemaining--;
      return;
    }
    this.#pubQueue.push([this.#topic, seqBytes(seq), payload]);
  }

  /** The next `count` batches get sequence numbers and are buffered for replay but NOT sent. */
  dropNext(count: number): void {
    this.#dropRemaining += Math.max(0, Math.floor(count));
  }

  /**
   * Replay requests are `[identity, "", start_seq8]`; anything else is ignored.
   * The reply uses the older vLLM/SGLang 4-frame form `[identity, "", seq8, payload]`
   * and end marker `[identity, "", ff*8, ""]`. Newer vLLM inserts the topic
   * before seq8 (`[identity, "", topic, seq8, payload]`); the gateway's
   * ZmqEventSource accepts both.
   */
  async #serveReplays(router: Router): Promise<void> {
    for (;;) {
      let frames: Buffer[];
      try {
        frames = await router.receive();
      } catch {
        return; // socket closed
      }
      if (this.#closed) return;
      const [identity, delimiter, start] = frames;
      if (frames.length !== 3 || !identity || delimiter?.length !== 0 || start?.length !== 8) continue;
      const from = start.readBigUInt64BE();
      for (let i = 0; i < this.#ring.length; i++) {
        const entry = this.#ring[(this.#ringStart + i) % this.#ring.length]!;
        if (entry.seq >= from) this.#routerQueue!.push([identity, EMPTY, seqBytes(entry.seq), entry.payload]);
      }
      this.#routerQueue!.push([identity, EMPTY, END_SEQ, EMPTY]);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#pubQueue.close();
    this.#routerQueue?.close();
    this.#pub.close();
    this.#router?.close();
    await this.#replayLoop;
  }
}
