import CircuitBreaker from 'opossum';
import { z } from 'zod';

/**
 * Per-worker circuit breaker settings (`upstream.breaker`). Defaults: open after
 * 3 consecutive failures (connect errors, timeouts, resets, 5xx), stay open
 * 5 s, then let exactly one probe request through; its success closes the
 * breaker, its failure opens it for another `openMs`.
 */
export const breakerConfigSchema = z.strictObject({
  enabled: z.boolean().default(true),
  /** Consecutive failed attempts that open the breaker. */
  failureThreshold: z.number().int().min(1).default(3),
  /** How long an open breaker sends nothing before it half-opens (opossum's `resetTimeout`). */
  openMs: z.number().int().min(10).default(5000),
});
export type BreakerConfig = z.infer<typeof breakerConfigSchema>;
export const DEFAULT_BREAKER: BreakerConfig = { enabled: true, failureThreshold: 3, openMs: 5000 };

export type BreakerState = 'closed' | 'half-open' | 'open';
/** Metric encoding of the state: `kvgate_worker_breaker_state` (0 closed, 1 half-open, 2 open). */
export const BREAKER_STATE_CODE: Readonly<Record<BreakerState, number>> = { closed: 0, 'half-open': 1, open: 2 };

/** Leave to send one attempt; hand it back with exactly one of `succeeded`, `failed` or `released`. */
export interface BreakerPass {
  /** True for the single request a half-open breaker lets through. */
  readonly probe: boolean;
  settled: boolean;
}

/** What `/debug/workers` shows of a breaker. */
export interface BreakerSnapshot {
  state: BreakerState;
  consecutiveFailures: number;
  probeInFlight: boolean;
  lastFailure: string | undefined;
  /** `Date.now()` of the last state change. */
  since: number;
  transitions: Record<BreakerState, number>;
}

/**
 * WorkerBreaker is one worker's circuit breaker. opossum keeps the state
 * machine, the open -> half-open timer and the transition events. We never
 * `fire()` it: an attempt's fate is known at its response head, long before a
 * generation ends, and a request is a handler-driven dispatch, not a promise,
 * so outcomes are reported here and drive `open()`/`close()` directly. That
 * also adds what opossum lacks: opening on consecutive failures (it only knows
 * error percentages over a window) and a half-open state that admits exactly
 * one probe (opossum's admits concurrent callers, opossum #819). Its own
 * timeout is off regardless (`timeout: false`; a generation outlasts 10 s).
 */
export class WorkerBreaker {
  readonly #config: BreakerConfig;
  readonly #cb: CircuitBreaker<[], undefined>;
  readonly #onChange: (state: BreakerState) => void;
  readonly #now: () => number;
  #state: BreakerState = 'closed';
  #consecutive = 0;
  #probeInFlight = false;
  #lastFailure: string | undefined;
  #since: number;
  readonly transitions: Record<BreakerState, number> = { closed: 0, 'half-open': 0, open: 0 };

  constructor(
    name: string,
    config: BreakerConfig,
    onChange: (state: BreakerState) => void,
    now: () => number = Date.now,
  ) {
    this.#config = config;
    this.#onChange = onChange;
    this.#now = now;
    this.#since = now();
    this.#cb = new CircuitBreaker(async () => undefined, {
      name,
      timeout: false,
      resetTimeout: config.openMs,
      enableSnapshots: false,
    });
    this.#cb.on('open', () => this.#enter('open'));
    this.#cb.on('halfOpen', () => this.#enter('half-open'));
    this.#cb.on('close', () => this.#enter('closed'));
  }

  get state(): BreakerState {
    return this.#state;
  }

  /** True when a new request may be sent: closed, or half-open with its probe slot free. */
  get allowsTraffic(): boolean {
    return this.#state === 'closed' || (this.#state === 'half-open' && !this.#probeInFlight);
  }

  /** Takes leave for one attempt, or undefined when the breaker refuses it. */
  pass(): BreakerPass | undefined {
    if (this.#state === 'closed' || !this.#config.enabled) return { probe: false, settled: false };
    if (this.#state === 'open' || this.#probeInFlight) return undefined;
    this.#probeInFlight = true;
    this.#onChange(this.#state);
    return { probe: true, settled: false };
  }

  /** The worker answered with a response head below 500. */
  succeeded(pass: BreakerPass): void {
    if (!this.#settle(pass)) return;
    this.#consecutive = 0;
    if (pass.probe) this.#cb.close();
  }

  /** The attempt failed for a reason that is the worker's (connect, timeout, reset, 5xx). */
  failed(pass: BreakerPass | undefined, reason: string): void {
    this.#lastFailure = reason;
    if (pass && !this.#settle(pass)) return;
    if (!this.#config.enabled) return;
    if (pass?.probe) {
      this.#cb.open();
      return;
    }
    // Outcomes of requests sent before the breaker left `closed` do not count twice.
    if (this.#state !== 'closed') return;
    if (++this.#consecutive >= this.#config.failureThreshold) this.#cb.open();
  }

  /** The attempt ended without saying anything about the worker (client went away). */
  released(pass: BreakerPass): void {
    if (!this.#settle(pass) || !pass.probe) return;
    this.#onChange(this.#state);
  }

  snapshot(): BreakerSnapshot {
    return {
      state: this.#state,
      consecutiveFailures: this.#consecutive,
      probeInFlight: this.#probeInFlight,
      lastFailure: this.#lastFailure,
      since: this.#since,
      transitions: { ...this.transitions },
    };
  }

  /** Stops opossum's timers. */
  shutdown(): void {
    this.#cb.shutdown();
  }

  #settle(pass: BreakerPass): boolean {
    if (pass.settled) return false;
    pass.settled = true;
    if (pass.probe) this.#probeInFlight = false;
    return true;
  }

  #enter(state: BreakerState): void {
    if (state === this.#state) return;
    this.#state = state;
    this.#since = this.#now();
    this.transitions[state]++;
    if (state === 'closed') this.#consecutive = 0;
    this.#onChange(state);
  }
}
