import type { KvEvent } from '../../indexer/events/types.js';
import type { CpuTier } from './cpu-tier.js';
import type { KvCache } from './kv-cache.js';
import { SimRequest, type FinishReason, type SimRequestInit } from './sim-request.js';
import { stepMs, type TimingModel } from './timing.js';

export { SimRequest, type FinishReason, type RemotePrefill, type SimRequestInit } from './sim-request.js';

export interface SchedulerOptions {
  cache: KvCache;
  timing: TimingModel;
  /** Host-memory tier (vLLM's OffloadingConnector): offloads committed blocks, loads them back on a GPU miss. */
  cpu?: CpuTier | undefined;
  maxNumBatchedTokens: number;
  maxNumSeqs: number;
  /** One call per step with that step's KV events (possibly empty). */
  publish(events: KvEvent[]): void;
  now?: () => number;
}

export interface SchedulerCounters {
  steps: number;
  prefillTokensComputed: number;
  decodeTokens: number;
  /** Tokens handed to clients (first tokens included). */
  generatedTokens: number;
  prefixQueryTokens: number;
  prefixHitTokens: number;
  preemptions: number;
  /** Remote prefills pulled (P/D decode side), tokens they brought, and pulls that failed (then recomputed). */
  kvLoads: number;
  kvLoadTokens: number;
  kvLoadFailures: number;
  /** Prompt tokens loaded back from the CPU tier instead of prefilled. */
  cpuLoadTokens: number;
  /**
   * Real milliseconds the engine fell behind its own clock beyond what it can
   * catch up (the process was too busy to step on time). Non-zero means the
   * machine, not the simulated GPU, set part of the timing.
   */
  lostMs: number;
  /** Real ms of the steps that computed prefill: prefill tokens over it is the engine's prefill rate while busy. */
  prefillBusyMs: number;
}

interface Scheduled {
  req: SimRequest;
  tokens: number;
  decode: boolean;
}

/** A step may run this far behind real time and still be caught up back to back; beyond, the clock restarts. */
const MAX_LAG_MS = 50;

/**
 * The engine loop, after vLLM v1's scheduler: each step first gives running
 * sequences their next tokens (a decode token, or the next chunk of a long
 * prefill), then admits waiting requests in FIFO order while the token budget,
 * the sequence cap and free blocks allow. A running sequence that cannot grow
 * preempts the most recently admitted one, which goes back to the head of the
 * queue and recomputes later. The step's effects (tokens out, blocks stored)
 * land when its simulated duration has elapsed. Idle = no timer at all.
 */
export class Scheduler {
  readonly waiting: SimRequest[] = [];
  readonly running: SimRequest[] = [];
  /** Admitted, blocks allocated, remote KV being pulled; they take a sequence slot but no token budget. */
  readonly loading: SimRequest[] = [];
  readonly counters: SchedulerCounters = {
    steps: 0,
    prefillTokensComputed: 0,
    decodeTokens: 0,
    generatedTokens: 0,
    prefixQueryTokens: 0,
    prefixHitTokens: 0,
    preemptions: 0,
    kvLoads: 0,
    kvLoadTokens: 0,
    kvLoadFailures: 0,
    cpuLoadTokens: 0,
    lostMs: 0,
    prefillBusyMs: 0,
  };
  readonly #o: SchedulerOptions;
  readonly #now: () => number;
  #busy = false;
  #clock = 0;
  /** Cancels the pending step timer, if any. */
  #cancel: (() => void) | undefined;
  #closed = false;

  constructor(options: SchedulerOptions) {
    this.#o = options;
    this.#now = options.now ?? (() => performance.now());
  }

  add(init: SimRequestInit): SimRequest {
    const req = new SimRequest(init, this.#now());
    this.waiting.push(req);
    this.#kick();
    return req;
  }

  /** Drops a request at once (client gone); its blocks are freed and stay cached. */
  abort(req: SimRequest): void {
    if (req.state === 'finished') return;
    const w = this.waiting.indexOf(req);
    if (w >= 0) this.waiting.splice(w, 1);
    const r = this.running.indexOf(req);
    if (r >= 0) this.running.splice(r, 1);
    const l = this.loading.indexOf(req);
    if (l >= 0) this.loading.splice(l, 1);
    this.#o.cache.free(req);
    req.state = 'finished';
    req.init.onFinish('abort');
  }

  /** Frees the blocks a finished `keepBlocks` request still holds (they stay cached). Idempotent. */
  release(req: SimRequest): void {
    if (req.state === 'finished') this.#o.cache.free(req);
  }

  /** Stops stepping; pending requests are aborted. */
  close(): void {
    this.#closed = true;
    this.#cancel?.();
    this.#cancel = undefined;
    for (const req of [...this.running, ...this.loading, ...this.waiting]) this.abort(req);
  }

  /** Publishes events produced outside a step (a prefix-cache reset) right away, as vLLM does on its next step. */
  flushEvents(): void {
    if (!this.#busy) this.#o.publish(this.#drain());
  }

  #kick(): void {
    if (this.#busy || this.#closed) return;
    this.#busy = true;
    this.#clock = this.#now();
    this.#defer(() => this.#step(), 0);
  }

  #defer(fn: () => void, delayMs: number): void {
    // setTimeout cannot wait less than 1 ms; shorter steps (high speedup) run on the next
    // turn of the loop, and the clock carried in #clock keeps their average pace right.
    if (delayMs >= 1) {
      const handle = setTimeout(fn, delayMs);
      this.#cancel = () => clearTimeout(handle);
    } else {
      const handle = setImmediate(fn);
      this.#cancel = () => clearImmediate(handle);
    }
  }

  #step(): void {
    this.#cancel = undefined;
    if (this.#closed) return;
    const usage = this.#o.cache.usage;
    const plan = this.#schedule();
    if (plan.length === 0) {
      this.#busy = false;
      this.#o.publish(this.#drain());
      return;
    }
    let prefill = 0;
    let decodes = 0;
    for (const s of plan) {
      if (s.decode) decodes++;
      else prefill += s.tokens;
    }
    const now = this.#now();
    if (now - MAX_LAG_MS > this.#clock) this.counters.lostMs += now - MAX_LAG_MS - this.#clock;
    const start = Math.max(this.#clock, now - MAX_LAG_MS);
    const end = start + stepMs(this.#o.timing, prefill, decodes, usage);
    if (prefill > 0) this.counters.prefillBusyMs += end - start;
    this.#clock = end;
    const delay = end - now;
    const finish = () => this.#finishStep(plan, prefill, decodes);
    this.#defer(finish, delay);
  }

  #schedule(): Scheduled[] {
    const { cache, maxNumBatchedTokens, maxNumSeqs } = this.#o;
    let budget = maxNumBatchedTokens;
    const plan: Scheduled[] = [];
    let preempted = false;
    for (let i = 0; i < this.running.length && budget > 0; i++) {
      const req = this.running[i]!;
      const n = Math.min(req.tokens.length - req.numComputed, budget);
      let ok = cache.allocate(req, req.numComputed + n);
      while (!ok) {
        const victim = this.running.pop()!;
        this.#preempt(victim);
        preempted = true;
        if (victim === req) break;
        ok = cache.allocate(req, req.numComputed + n);
      }
      if (!ok) break;
      plan.push({ req, tokens: n, decode: req.outputCount > 0 && req.numComputed === req.tokens.length - 1 });
      budget -= n;
    }
    // vLLM admits nothing new in a step that had to preempt: memory is short.
    while (
      !preempted &&
      this.waiting.length > 0 &&
      this.running.length + this.loading.length < maxNumSeqs &&
      budget > 0
    ) {
      const req = this.waiting[0]!;
      const prefix = cache.findPrefix(req);
      const cached = prefix.length * cache.blockSize;
      const load = this.#startLoad(req, prefix, cached);
      if (load === 'started') continue;
      if (load === 'blocked') break;
      const n = Math.min(req.tokens.length - cached, budget);
      if (!cache.allocate(req, cached + n, prefix)) {
        if (this.running.length === 0 && this.loading.length === 0)
          this.#fail(req, 'request does not fit in the KV cache');
        break;
      }
      this.waiting.shift();
      this.running.push(req);
      req.state = 'running';
      req.numComputed = cached;
      if (req.cachedTokens < 0) {
        req.cachedTokens = cached;
        this.counters.prefixQueryTokens += req.tokens.length;
        this.counters.prefixHitTokens += cached;
      }
      plan.push({ req, tokens: n, decode: false });
      budget -= n;
    }
    return plan;
  }

  /**
   * Admits a request whose prompt KV comes from a remote prefill: allocates
   * blocks for everything but the last prompt token (computed here, for its
   * logits), then pulls what is not cached locally, outside the step loop, as
   * vLLM's NixlConnector loads asynchronously. Only on first admission: a
   * preempted request recomputes. `local`: not a remote load, or nothing to pull;
   * `blocked`: no room yet (or it can never fit, and failed).
   */
  #startLoad(req: SimRequest, prefix: number[], cached: number): 'started' | 'local' | 'blocked' {
    const remote = req.init.remote;
    if (!remote) return this.#startCpuLoad(req, prefix, cached);
    if (req.cachedTokens >= 0) return 'local';
    const target = Math.min(remote.tokens, req.tokens.length - 1);
    if (target <= cached) return 'local';
    if (!this.#o.cache.allocate(req, target, prefix)) {
      if (this.running.length === 0 && this.loading.length === 0)
        this.#fail(req, 'request does not fit in the KV cache');
      return 'blocked';
    }
    this.waiting.shift();
    this.loading.push(req);
    req.state = 'loading';
    req.numComputed = cached;
    req.cachedTokens = target;
    this.counters.prefixQueryTokens += req.tokens.length;
    this.counters.prefixHitTokens += cached;
    this.counters.kvLoads++;
    const done = (ok: boolean) => this.#loaded(req, ok ? target : cached);
    remote.load(target - cached).then(done, () => done(false));
    return 'started';
  }

  /**
   * The OffloadingConnector's side of admission: blocks past the GPU prefix
   * that host memory holds are allocated and copied back (PCIe time, outside
   * the step loop, as the connector loads asynchronously) instead of prefilled.
   */
  #startCpuLoad(req: SimRequest, prefix: number[], cached: number): 'started' | 'local' | 'blocked' {
    const { cpu, cache } = this.#o;
    if (!cpu?.enabled) return 'local';
    const maxBlocks = Math.floor((req.tokens.length - 1) / cache.blockSize);
    cache.hashBlocks(req, maxBlocks);
    const hits = cpu.lookup(req.blockHashes, prefix.length, maxBlocks);
    if (hits === 0) return 'local';
    const target = (prefix.length + hits) * cache.blockSize;
    if (!cache.allocate(req, target, prefix)) {
      if (this.running.length === 0 && this.loading.length === 0)
        this.#fail(req, 'request does not fit in the KV cache');
      return 'blocked';
    }
    this.waiting.shift();
    this.loading.push(req);
    req.state = 'loading';
    req.numComputed = cached;
    if (req.cachedTokens < 0) {
      // vLLM's usage counts connector hits as cached tokens.
      req.cachedTokens = target;
      this.counters.prefixQueryTokens += req.tokens.length;
      this.counters.prefixHitTokens += cached;
    }
    void cpu.load(hits).then(() => this.#loaded(req, target, 'cpu'));
    return 'started';
  }

  #loaded(req: SimRequest, numComputed: number, from: 'remote' | 'cpu' = 'remote'): void {
    const i = this.loading.indexOf(req);
    if (i < 0 || this.#closed) return; // aborted meanwhile
    this.loading.splice(i, 1);
    if (numComputed > req.numComputed) {
      if (from === 'cpu') this.counters.cpuLoadTokens += numComputed - req.numComputed;
      else this.counters.kvLoadTokens += numComputed - req.numComputed;
      req.numComputed = numComputed;
      // Pulled blocks become this engine's cached blocks: BlockStored, as vLLM emits after a NIXL load.
      this.#o.cache.commit(req, numComputed);
    } else {
      this.counters.kvLoadFailures++;
      req.cachedTokens = req.numComputed;
    }
    req.state = 'running';
    this.running.push(req);
    this.#kick();
  }

  #finishStep(plan: Scheduled[], prefill: number, decodes: number): void {
    this.#cancel = undefined;
    if (this.#closed) return;
    const { cache } = this.#o;
    this.counters.steps++;
    this.counters.prefillTokensComputed += prefill;
    this.counters.decodeTokens += decodes;
    for (const { req, tokens } of plan) {
      if (req.state !== 'running') continue; // aborted while the step ran
      req.numComputed += tokens;
      cache.commit(req, req.numComputed);
      if (req.numComputed < req.tokens.length) continue; // more prefill chunks to go
      const index = req.outputCount++;
      this.counters.generatedTokens++;
      const token = req.init.outputToken(index);
      req.tokens.push(token);
      if (req.firstTokenMs === undefined) req.firstTokenMs = this.#now();
      req.init.onToken(token, index);
      if (req.outputCount >= req.init.maxTokens && req.state === 'running') this.#complete(req, req.init.finishReason);
    }
    this.#o.publish(this.#drain());
    this.#step();
  }

  /** The step's GPU events, with the CPU tier's offload events spliced in. */
  #drain(): KvEvent[] {
    const events = this.#o.cache.drainEvents();
    return this.#o.cpu ? this.#o.cpu.withOffloads(events) : events;
  }

  #preempt(req: SimRequest): void {
    this.#o.cache.free(req);
    req.numComputed = 0;
    req.state = 'waiting';
    req.preemptions++;
    this.counters.preemptions++;
    this.waiting.unshift(req);
  }

  #complete(req: SimRequest, reason: FinishReason, message?: string): void {
    const r = this.running.indexOf(req);
    if (r >= 0) this.running.splice(r, 1);
    if (!req.init.keepBlocks || reason === 'error') this.#o.cache.free(req);
    req.state = 'finished';
    req.init.onFinish(reason, message);
  }

  #fail(req: SimRequest, message: string): void {
    this.waiting.shift();
    this.#complete(req, 'error', message);
  }
}
