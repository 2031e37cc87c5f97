/**
 * Takes the routing decisions of several gateway replicas in one order, the
 * order their requests arrived, so that requests arriving together at
 * different replicas do not all pick the same least-loaded worker.
 *
 * Load deltas alone leave a window: a replica publishes its choice only once
 * made, and a request that arrived at the same moment at another replica is
 * decided there before the delta lands (tokenizing a long prompt takes
 * milliseconds, so "the same moment" is wide). A single gateway has no such
 * window: its decisions are taken one after another, each seeing the last.
 *
 * Here each replica announces a request when it arrives (`p`: slot id and
 * arrival time), and announces the decision's end (`c`) in the same message
 * as the load delta it caused. Before deciding, a replica waits while another
 * replica holds an announced, undecided request that arrived earlier (ties:
 * the lower replica id first), at most `maxWaitMs`; first it yields once to the
 * event loop, since in a burst a replica is busy with its own requests and would
 * otherwise decide before reading what its peers sent. Every replica compares the
 * same (arrival time, replica id) pairs, so they agree on the order and none
 * waits for another that waits for it. A replica that waits for nobody pays one
 * event-loop turn; messages ride on the per-tick batch load sharing already sends.
 * Arrival times are wall clocks (`Date.now`): across hosts, skew only reorders
 * near-simultaneous requests, it cannot deadlock (the wait is bounded).
 */
export interface DecisionOrderOptions {
  replicaId: string;
  maxWaitMs: number;
  now: () => number;
  /** Asks load sharing to flush (this tick) what `takeOutgoing` returns. */
  schedule: () => void;
}

export interface DecisionTurn {
  /**
   * Undefined without peers. Otherwise yields once, so that messages already at the socket are taken in (a
   * replica busy with its own burst reads its peers' late), then resolves once no earlier request elsewhere is
   * undecided, or after maxWaitMs.
   */
  wait(): Promise<void> | undefined;
  /** The decision is taken (or abandoned): call in the same tick as the load it adds. Idempotent. */
  done(): void;
}

/** An announced pending decision elsewhere older than this is taken for lost (its end message went missing). */
const FORGET_AFTER_MS = 5000;

interface Waiter {
  arrivedAt: number;
  resolve: () => void;
  timer: NodeJS.Timeout;
}

/** The turn of a replica with nobody to wait for (no peers, or ordering off). */
export const NO_WAIT: DecisionTurn = { wait: () => undefined, done: () => {} };

export class DecisionOrder {
  readonly #o: DecisionOrderOptions;
  /** Per peer: slot id -> arrival time (sender's clock) and when we heard of it (ours). */
  readonly #peers = new Map<string, Map<number, { at: number; heard: number }>>();
  readonly #waiters = new Set<Waiter>();
  #slot = 0;
  #announce: [number, number][] = [];
  #ended: number[] = [];
  readonly counts = { waited: 0, timedOut: 0, waitedMs: 0 };

  constructor(options: DecisionOrderOptions) {
    this.#o = options;
  }

  /** Announces a request that arrived at `arrivedAt` (its replica's clock). With no peers, a no-op turn. */
  turn(arrivedAt: number, peers: number): DecisionTurn {
    if (peers === 0) return NO_WAIT;
    const id = ++this.#slot;
    this.#announce.push([id, arrivedAt]);
    this.#o.schedule();
    let ended = false;
    return {
      wait: () =>
        new Promise<void>((resolve) =>
          setImmediate(() => {
            if (this.#blocked(arrivedAt)) void this.#waitFor(arrivedAt).then(resolve);
            else resolve();
          }),
        ),
      done: () => {
        if (ended) return;
        ended = true;
        this.#ended.push(id);
        this.#o.schedule();
      },
    };
  }

  /** What to publish this tick: new announcements (`p`) and ended decisions (`c`). */
  takeOutgoing(): { p?: [number, number][]; c?: number[] } {
    const out: { p?: [number, number][]; c?: number[] } = {};
    if (this.#announce.length > 0) out.p = this.#announce;
    if (this.#ended.length > 0) out.c = this.#ended;
    this.#announce = [];
    this.#ended = [];
    return out;
  }

  /** A peer's announcements. Malformed entries are skipped. */
  announced(peer: string, entries: unknown[]): void {
    let slots = this.#peers.get(peer);
    if (!slots) this.#peers.set(peer, (slots = new Map<number, { at: number; heard: number }>()));
    const heard = this.#o.now();
    for (const e of entries) {
      if (Array.isArray(e) && Number.isInteger(e[0]) && Number.isFinite(e[1]))
        slots.set(e[0] as number, { at: e[1] as number, heard });
    }
  }

  /** A peer's ended decisions: whoever waited on them may go. */
  ended(peer: string, ids: unknown[]): void {
    const slots = this.#peers.get(peer);
    if (!slots) return;
    for (const id of ids) if (typeof id === 'number') slots.delete(id);
    this.#release();
  }

  /** A peer is gone: nothing of it blocks anyone. */
  forget(peer: string): void {
    if (this.#peers.delete(peer)) this.#release();
  }

  close(): void {
    for (const w of this.#waiters) {
      clearTimeout(w.timer);
      w.resolve();
    }
    this.#waiters.clear();
  }

  /** Is an earlier-arrived request of another replica still undecided? */
  #blocked(arrivedAt: number): boolean {
    const me = this.#o.replicaId;
    const stale = this.#o.now() - FORGET_AFTER_MS;
    for (const [peer, slots] of this.#peers) {
      for (const [id, s] of slots) {
        if (s.heard < stale) slots.delete(id);
        else if (s.at < arrivedAt || (s.at === arrivedAt && peer < me)) return true;
      }
    }
    return false;
  }

  #waitFor(arrivedAt: number): Promise<void> {
    const started = this.#o.now();
    this.counts.waited++;
    return new Promise<void>((resolve) => {
      const w: Waiter = {
        arrivedAt,
        resolve: () => {
          this.counts.waitedMs += this.#o.now() - started;
          resolve();
        },
        timer: setTimeout(() => {
          this.#waiters.delete(w);
          this.counts.timedOut++;
          w.resolve();
        }, this.#o.maxWaitMs),
      };
      this.#waiters.add(w);
    });
  }

  #release(): void {
    for (const w of this.#waiters) {
      if (this.#blocked(w.arrivedAt)) continue;
      clearTimeout(w.timer);
      this.#waiters.delete(w);
      w.resolve();
    }
  }
}
