import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { ResponseObserver } from '../../proxy/usage-sniffer.js';
import type { ToolRetentionConfig } from './config.js';
import { ToolLatency } from './latency.js';
import { type PrefetchPlan, type PrefetchView, Prefetcher, type Timers } from './prefetch.js';
import { createRetainer, type KvRetainer, type RetainRequest, type RetainTarget } from './retainer.js';
import { ToolCallSniffer } from './sniffer.js';

/** A turn that ended in tool calls and whose follow-up has not arrived yet. */
interface Pending {
  readonly worker: string;
  readonly tools: readonly string[];
  readonly at: number;
  /** When the follow-up is expected (learned quantile, or the default) and how long the prefix is kept. */
  readonly keepMs: number;
  readonly predictedMs: number | undefined;
  pinnedTokens: number;
  prefetch?: PrefetchPlan | undefined;
  /** What was pinned where, kept while the retainer can release it. */
  pin?: { readonly target: RetainTarget; readonly req: RetainRequest } | undefined;
}

/** What `/debug/route` and the front learn about a request's tool-call session. */
export interface ToolAffinity {
  readonly session: string;
  readonly worker: string;
  readonly tools: readonly string[];
  readonly waitedMs: number;
  /** Median learned return delay of the tool (ms), when it has enough samples. */
  readonly predictedReturnMs: number | undefined;
  readonly keepMs: number;
  readonly pinnedTokens: number;
  /** The warm-up planned before the predicted return (null: prefetch off, or the tool's delays not learned yet). */
  readonly prefetch: PrefetchView | null;
}

export interface ToolSessionsDeps {
  readonly config: ToolRetentionConfig;
  readonly retainer: KvRetainer;
  readonly registry: Registry;
  readonly log: Logger;
  readonly now?: () => number;
  readonly timers?: Timers;
}

const RETURN_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800];

/**
 * Session identity: the session header when the client sends one, else the
 * conversation's opening (model, then every message up to the first user
 * message), which each later turn of an agent loop repeats verbatim. Two
 * conversations that open identically share a key; the affinity they then
 * share only sends both where that opening is cached, which is harmless.
 */
export function sessionKeyOf(
  headerKey: string | undefined,
  model: string,
  body: Record<string, unknown>,
): string | undefined {
  if (headerKey) return `h:${headerKey}`;
  const messages = body.messages;
  if (!Array.isArray(messages) || messages.length === 0) return undefined;
  const firstUser = messages.findIndex((m) => (m as { role?: unknown } | null)?.role === 'user');
  if (firstUser < 0) return undefined;
  const h = createHash('sha256')
    .update(model)
    .update('\0')
    .update(JSON.stringify(messages.slice(0, firstUser + 1)));
  return `c:${h.digest('base64url').slice(0, 22)}`;
}

/** True when the request carries a tool's result: its last message has role `tool`. */
export function isToolFollowUp(body: Record<string, unknown>): boolean {
  const messages = body.messages;
  if (!Array.isArray(messages) || messages.length === 0) return false;
  return (messages[messages.length - 1] as { role?: unknown } | null)?.role === 'tool';
}

/**
 * Tool-call aware KV retention: remembers, per session, which worker served a
 * turn that ended in tool calls; sends the follow-up back there; learns per
 * tool name how long the follow-up takes; and asks the engine (through one
 * `KvRetainer`) to keep the prefix that long. Memory is bounded: an LRU of
 * pending sessions and one fixed-size histogram per tool, for at most
 * `maxTools` tools.
 */
export class ToolSessions {
  readonly #c: ToolRetentionConfig;
  readonly #retainer: KvRetainer;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #pending: LRUCache<string, Pending>;
  readonly #tools: LRUCache<string, ToolLatency>;
  readonly #calls: Counter<'tool'>;
  readonly #followUps: Counter<'outcome'>;
  readonly #returns: Histogram<'tool'>;
  readonly #retains: Counter<'engine' | 'result'>;
  readonly #prefetcher: Prefetcher;

  constructor(d: ToolSessionsDeps) {
    this.#c = d.config;
    this.#retainer = d.retainer;
    this.#log = d.log;
    this.#now = d.now ?? (() => performance.now());
    this.#pending = new LRUCache<string, Pending>({
      max: d.config.maxSessions,
      ttl: d.config.sessionTtlMs,
      ttlAutopurge: false,
      // Only `returned` deletes: the follow-up came before the warm-up. Evicted, expired or replaced: forgotten.
      dispose: (p, _k, reason) => p.prefetch?.cancel(reason === 'delete' ? 'cancelled' : 'forgotten'),
    });
    this.#tools = new LRUCache({ max: d.config.maxTools });
    const registers = [d.registry];
    this.#prefetcher = new Prefetcher({
      config: d.config.prefetch,
      retainer: d.retainer,
      registry: d.registry,
      log: d.log,
      now: this.#now,
      ...(d.timers ? { timers: d.timers } : {}),
    });
    this.#calls = new Counter({
      name: 'kvgate_tool_calls_total',
      help: 'Responses that ended in tool calls, by (first) tool name',
      labelNames: ['tool'],
      registers,
    });
    this.#followUps = new Counter({
      name: 'kvgate_tool_followups_total',
      help: 'Tool-result turns: kept on the worker holding the prefix (kept), moved there from the strategy choice (moved), holder unavailable (lost), or no pending tool call known (unknown)',
      labelNames: ['outcome'],
      registers,
    });
    this.#returns = new Histogram({
      name: 'kvgate_tool_return_seconds',
      help: 'Time from a response ending in tool calls to the follow-up turn, by tool',
      labelNames: ['tool'],
      buckets: RETURN_BUCKETS,
      registers,
    });
    this.#retains = new Counter({
      name: 'kvgate_tool_retain_requests_total',
      help: 'Engine calls to keep a session prefix during a tool call (result ok, error) and to let go of it when the follow-up came (released, release_error), by engine API',
      labelNames: ['engine', 'result'],
      registers,
    });
    const pending = this.#pending;
    new Gauge({
      name: 'kvgate_tool_pending_sessions',
      help: 'Sessions waiting for a tool result',
      registers,
      collect() {
        this.set(pending.size);
      },
    });
  }

  /**
   * Wraps a chat response's observer: when the response ends in tool calls,
   * the session is remembered on `worker` and the retainer is asked to keep
   * the prefix.
   */
  observe(
    inner: ResponseObserver,
    session: string,
    worker: RetainTarget,
    model: string,
    body: Record<string, unknown>,
  ): ResponseObserver {
    const sniffer = new ToolCallSniffer();
    return {
      data: (chunk) => {
        sniffer.scan(chunk);
        inner.data(chunk);
      },
      end: (status) => {
        inner.end(status);
        if (status === 200 && sniffer.toolCalls) this.#toolCall(session, worker, model, body, sniffer.names);
      },
    };
  }

  /** The pending tool call of a follow-up request, without consuming it (routing and `/debug/route`). */
  affinity(session: string | undefined): ToolAffinity | undefined {
    if (session === undefined) return undefined;
    const p = this.#pending.get(session);
    if (!p) return undefined;
    return {
      session,
      worker: p.worker,
      tools: p.tools,
      waitedMs: Math.round(this.#now() - p.at),
      predictedReturnMs: this.#median(p.tools[0]!),
      keepMs: Math.round(p.keepMs),
      pinnedTokens: p.pinnedTokens,
      prefetch: p.prefetch?.view() ?? null,
    };
  }

  /**
   * The follow-up arrived: learns the tool's return delay and forgets the
   * pending call. `outcome` says what routing did with it (for the metric).
   */
  returned(session: string, outcome: 'kept' | 'moved' | 'lost'): void {
    const p = this.#pending.get(session);
    if (!p) return;
    this.#pending.delete(session);
    const ms = this.#now() - p.at;
    const tool = p.tools[0]!;
    this.#latency(tool).observe(ms);
    this.#returns.labels(tool).observe(ms / 1000);
    this.#followUps.labels(outcome).inc();
    if (p.pin && p.pinnedTokens > 0) this.#release(p.pin.target, p.pin.req);
  }

  /** The follow-up came: the pin has done its work (the next tool call, if any, pins the longer prefix). */
  #release(target: RetainTarget, req: RetainRequest): void {
    this.#retainer.release!(target, req).then(
      () => this.#retains.labels(this.#retainer.name, 'released').inc(),
      (err: unknown) => {
        this.#retains.labels(this.#retainer.name, 'release_error').inc();
        this.#log.warn({ err, worker: target.id, engine: this.#retainer.name }, 'tool retention: release failed');
      },
    );
  }

  /** A tool-result turn for which no pending call is known (expired, evicted, or another replica's). */
  unknown(): void {
    this.#followUps.labels('unknown').inc();
  }

  summary(): Record<string, unknown> {
    const tools: Record<string, unknown> = {};
    for (const [name, l] of this.#tools.entries())
      tools[name] = {
        samples: l.samples,
        p50Ms: l.quantile(0.5),
        keepMs: this.#keepMs(name),
        prefetchAtMs: this.#prefetcher.enabled ? this.#prefetchAt(name) : undefined,
      };
    return {
      enabled: true,
      engine: this.#retainer.name,
      pendingSessions: this.#pending.size,
      prefetch: this.#prefetcher.summary(),
      tools,
    };
  }

  #toolCall(session: string, worker: RetainTarget, model: string, body: Record<string, unknown>, names: string[]) {
    const tools = names.length > 0 ? names : ['unknown'];
    const keepMs = this.#keepMs(tools[0]!);
    const pending: Pending = {
      worker: worker.id,
      tools,
      at: this.#now(),
      keepMs,
      predictedMs: this.#median(tools[0]!),
      pinnedTokens: 0,
    };
    this.#pending.set(session, pending);
    this.#calls.labels(tools[0]!).inc();
    pending.prefetch = this.#prefetcher.plan(
      worker,
      { model, body },
      pending.at,
      this.#learned(tools[0]!, this.#c.prefetch.quantile),
      () => this.#pending.peek(session) === pending,
    );
    if (this.#retainer.name === 'none') return;
    if (this.#retainer.release) pending.pin = { target: worker, req: { model, body } };
    this.#retainer.retain(worker, { model, body }, keepMs).then(
      (tokens) => {
        pending.pinnedTokens = tokens;
        this.#retains.labels(this.#retainer.name, 'ok').inc();
      },
      (err: unknown) => {
        this.#retains.labels(this.#retainer.name, 'error').inc();
        this.#log.warn({ err, worker: worker.id, engine: this.#retainer.name }, 'tool retention: engine call failed');
      },
    );
  }

  #latency(tool: string): ToolLatency {
    let l = this.#tools.get(tool);
    if (!l) this.#tools.set(tool, (l = new ToolLatency()));
    return l;
  }

  #median(tool: string): number | undefined {
    return this.#learned(tool, 0.5);
  }

  #learned(tool: string, q: number): number | undefined {
    const l = this.#tools.peek(tool);
    return l && l.samples >= this.#c.minSamples ? l.quantile(q) : undefined;
  }

  #prefetchAt(tool: string): number | undefined {
    const q = this.#learned(tool, this.#c.prefetch.quantile);
    return q === undefined ? undefined : Math.round(Math.max(0, q - this.#c.prefetch.leadMs));
  }

  /** How long to keep a prefix for this tool: its learned quantile, capped; the default until it has samples. */
  #keepMs(tool: string): number {
    const l = this.#tools.peek(tool);
    if (!l || l.samples < this.#c.minSamples) return this.#c.defaultRetainMs;
    return Math.min(this.#c.maxRetainMs, l.quantile(this.#c.retainQuantile)!);
  }
}

/** The gateway's tool sessions, or undefined when `toolRetention.enabled` is off. */
export function createToolSessions(
  config: ToolRetentionConfig,
  registry: Registry,
  log: Logger,
): ToolSessions | undefined {
  return config.enabled ? new ToolSessions({ config, retainer: createRetainer(config), registry, log }) : undefined;
}
