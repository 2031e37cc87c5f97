import type { Logger } from 'pino';
import { z } from 'zod';
import { labelNameSchema } from './experiments.js';
import type { LoadTicket } from '../fleet/fleet.js';
import type { GatewayMetrics } from '../ops/metrics.js';
import type { PromptBlocksProvider } from './pipeline.js';
import type { InferenceRequest } from '../front/request.js';
import type { Decision, RouteContext, Strategy, WorkerView } from './strategies/strategy.js';

/**
 * Shadow mode: for a sample of requests, ask other strategies what they would
 * have chosen. Nothing is sent and no load is taken; only metrics are recorded.
 */
export const shadowConfigSchema = z.strictObject({
  /** Fraction of routed requests that get shadow decisions. */
  sampleRate: z.number().min(0).max(1).default(0.1),
  /** A strategy name, or `{strategy, params, name}` to compare one strategy under several settings. */
  strategies: z
    .array(
      z.union([
        z.string().min(1),
        z.strictObject({
          name: labelNameSchema.optional(),
          strategy: z.string().min(1),
          params: z.record(z.string(), z.unknown()).default({}),
        }),
      ]),
    )
    .min(1),
});
export type ShadowConfig = z.infer<typeof shadowConfigSchema>;

/** Shadow entries normalised to `{name, strategy, params}`; `name` is the `shadow` metric label. */
export function shadowEntries(
  config: ShadowConfig,
): { name: string; strategy: string; params: Record<string, unknown> }[] {
  return config.strategies.map((s) =>
    typeof s === 'string'
      ? { name: s, strategy: s, params: {} }
      : { name: s.name ?? s.strategy, strategy: s.strategy, params: s.params },
  );
}

/** Built shadow strategies (own instances: their state never mixes with the real ones). */
export interface ShadowSet {
  readonly sampleRate: number;
  readonly entries: readonly { readonly name: string; readonly strategy: Strategy }[];
}

/** What a shadow evaluation needs from the real, already forwarded, decision. */
export interface ShadowJob {
  readonly set: ShadowSet;
  readonly ctx: RouteContext;
  readonly request: InferenceRequest;
  readonly strategy: string;
  readonly worker: WorkerView;
  readonly candidates: readonly WorkerView[];
  readonly ticket: LoadTicket;
}

export interface ShadowDeps {
  readonly metrics: GatewayMetrics;
  readonly log: Logger;
  readonly random: () => number;
  readonly promptBlocks: PromptBlocksProvider | undefined;
}

interface Tally {
  decisions: number;
  agreed: number;
  predictedCachedTokens: number;
}

/**
 * Runs shadow strategies after the real request was forwarded (`setImmediate`),
 * so they never delay it. `onRouted` is never called on a shadow strategy.
 */
export class Shadower {
  readonly #d: ShadowDeps;
  readonly #tallies = new Map<string, Tally & { strategy: string; shadow: string }>();

  constructor(deps: ShadowDeps) {
    this.#d = deps;
  }

  /** Samples the request and schedules the shadow decisions; returns whether it was sampled. */
  maybeRun(job: ShadowJob): boolean {
    if (job.set.entries.length === 0 || this.#d.random() >= job.set.sampleRate) return false;
    setImmediate(() => {
      this.#run(job).catch((err: unknown) =>
        this.#d.log.warn({ err, requestId: job.ctx.requestId }, 'shadow routing failed'),
      );
    });
    return true;
  }

  async #run(job: ShadowJob): Promise<void> {
    let ctx = job.ctx;
    const provider = this.#d.promptBlocks;
    if (!ctx.blocks && provider && job.set.entries.some((e) => e.strategy.needsPromptBlocks)) {
      const blocks = await provider(job.request.body, job.request.model, job.request.kind).catch(() => undefined);
      if (blocks) ctx = { ...ctx, blocks, promptTokens: blocks.tokenCount };
    }
    const decisions: [string, Decision][] = [];
    // The real decision was made before this request's own load was counted: take it out while the shadows decide.
    withoutOwnLoad(job.ticket, () => {
      for (const e of job.set.entries) {
        try {
          decisions.push([e.name, e.strategy.choose(ctx, job.candidates)]);
        } catch (err) {
          this.#d.log.warn({ err, shadow: e.name, requestId: ctx.requestId }, 'shadow strategy failed');
        }
      }
    });
    for (const [name, d] of decisions) {
      const agreed = d.worker.id === job.worker.id;
      const predicted =
        ctx.blocks && d.predictedCachedBlocks !== undefined
          ? d.predictedCachedBlocks * ctx.blocks.blockSize
          : undefined;
      this.#d.metrics.shadowDecision(job.strategy, name, agreed, predicted);
      const key = `${job.strategy}\0${name}`;
      let t = this.#tallies.get(key);
      if (!t)
        this.#tallies.set(
          key,
          (t = { strategy: job.strategy, shadow: name, decisions: 0, agreed: 0, predictedCachedTokens: 0 }),
        );
      t.decisions++;
      if (agreed) t.agreed++;
      t.predictedCachedTokens += predicted ?? 0;
    }
  }

  /** Per (real strategy, shadow strategy): decisions, agreement rate, mean predicted cached tokens. */
  summary(): Record<string, unknown>[] {
    return [...this.#tallies.values()].map((t) => ({
      strategy: t.strategy,
      shadow: t.shadow,
      decisions: t.decisions,
      agreed: t.agreed,
      agreement: t.decisions === 0 ? null : t.agreed / t.decisions,
      meanPredictedCachedTokens: t.decisions === 0 ? null : t.predictedCachedTokens / t.decisions,
    }));
  }
}

/** Runs `fn` with the ticket's load taken off its worker, then puts it back (synchronously: nobody else sees the gap). */
function withoutOwnLoad(ticket: LoadTicket, fn: () => void): void {
  const l = ticket.worker.load;
  const { phase } = ticket;
  if (phase === 'done') return fn();
  const sign = (s: number) => {
    l.inflightRequests += s;
    if (phase === 'prefill') {
      l.prefillRequests += s;
      l.prefillTokens += s * ticket.promptTokens;
    } else {
      l.decodeRequests += s;
      l.decodeBlocks += s * ticket.blocks;
    }
  };
  sign(-1);
  try {
    fn();
  } finally {
    sign(1);
  }
}
