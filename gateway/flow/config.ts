import { z } from 'zod';
import { matchConfigSchema } from '../routing/policies/match.js';

const NAME = /^[a-z][a-z0-9_-]{0,31}$/;

/**
 * One priority class. Classes are listed highest priority first: a queued request of
 * an earlier class is always released before one of a later class.
 */
export const flowClassSchema = z.strictObject({
  name: z.string().regex(NAME, 'class name: lower-case letters, digits, _ and -, at most 32, starting with a letter'),
  /** Requests this class takes by policy match (the routing policies' matcher); the first matching class wins. */
  match: matchConfigSchema.optional(),
  /** Requests of this class waiting in the gateway at most; an arrival beyond it is shed (429). */
  maxQueued: z.number().int().min(0).default(256),
  /** Longest wait in the gateway before the request is shed (429). */
  ttlMs: z.number().int().min(1).default(30_000),
  /** May a higher class's arrival to a full gateway queue evict this class's oldest queued request? */
  sheddable: z.boolean().default(false),
  /** Default time-to-first-token target (the `x-kvgate-ttft-ms` header overrides it). */
  ttftMs: z.number().int().min(1).optional(),
  /** Default time-per-output-token target, counted for attainment (the `x-kvgate-tpot-ms` header overrides it). */
  tpotMs: z.number().int().min(1).optional(),
  /**
   * When no candidate is predicted to meet the TTFT target: `route` sends it anyway to the
   * strategy's choice, `hold` keeps it queued until one is (or its TTL ends), `shed` answers 429 now.
   */
  onSloMiss: z.enum(['route', 'hold', 'shed']).default('route'),
});
export type FlowClassConfig = z.infer<typeof flowClassSchema>;

/** A worker's capacity for the saturation test; unset dimensions are learned or ignored (see `saturation`). */
const capacitySchema = z.strictObject({
  prefillTokens: z.number().int().min(1).optional(),
  decodeBlocks: z.number().int().min(1).optional(),
});

/**
 * Flow control (`flow`, off by default): holds requests in the gateway while every
 * candidate worker is saturated, releases them by priority class, tenant fairness
 * and deadline, sheds what cannot be served in time, and routes against TTFT targets.
 */
export const flowConfigSchema = z
  .strictObject({
    enabled: z.boolean().default(false),
    classes: z
      .array(flowClassSchema)
      .min(1)
      .default([
        { name: 'critical', maxQueued: 256, ttlMs: 30_000, sheddable: false, onSloMiss: 'route' },
        { name: 'standard', maxQueued: 256, ttlMs: 30_000, sheddable: false, onSloMiss: 'route' },
        { name: 'sheddable', maxQueued: 256, ttlMs: 30_000, sheddable: true, onSloMiss: 'route' },
      ]),
    /** Class of a request no header, API key or match placed. Must name a class. */
    defaultClass: z.string().default('standard'),
    /** Header naming the class; empty disables it. An unknown class name is a 400. */
    classHeader: z.string().default('x-kvgate-priority'),
    /** Requests queued in the gateway at most, all classes together. */
    maxQueued: z.number().int().min(0).default(1024),
    /** The `retry-after` of a 429, in seconds. */
    retryAfterSeconds: z.number().int().min(0).default(1),
    tenants: z
      .strictObject({
        /** Header carrying the fairness key; empty disables it. */
        header: z.string().default('x-kvgate-tenant'),
        /** Without the header, the client's API key (`Authorization: Bearer`) is the fairness key (hashed, never shown). */
        fromApiKey: z.boolean().default(true),
        /** Relative shares (within a class; across the fleet with `fairness: fleet`); unlisted tenants weigh 1. */
        weights: z.record(z.string().min(1), z.number().min(0.01).max(1000)).default({}),
        /**
         * `class`: tenants share each class fairly and classes go strictly in order, so a tenant's
         * higher-class traffic goes before everyone's lower-class traffic, however much it sends.
         * `fleet`: as `class`, except that a tenant using more than its share of the fleet (recent
         * prompt tokens dispatched, against its weight among the active tenants) has its held
         * requests released after every other tenant's, whatever their class (see tenant-share.ts).
         */
        fairness: z.enum(['class', 'fleet']).default('class'),
        fleetShare: z
          .strictObject({
            /** Half-life of a tenant's recorded use: how far back "recently" reaches. */
            halfLifeMs: z.number().int().min(100).default(10_000),
            /** Over its share means above this many times its fair share (room for bursts). */
            tolerance: z.number().min(1).max(10).default(1.25),
          })
          .prefault({}),
        /** Distinct tenant label values in metrics and /debug/flow; later tenants share the label `other`. */
        maxLabels: z.number().int().min(1).max(1000).default(20),
      })
      .prefault({}),
    /** Class and tenant by API key (the bearer token as sent); matched before policy matches. */
    apiKeys: z
      .record(z.string().min(8), z.strictObject({ class: z.string().optional(), tenant: z.string().min(1).optional() }))
      .default({}),
    saturation: z
      .strictObject({
        /** Capacity of every worker; a worker is saturated when any configured dimension is reached. */
        default: capacitySchema.prefault({}),
        /** Per worker id, over `default`. */
        workers: z.record(z.string(), capacitySchema).default({}),
        /**
         * Without a configured `prefillTokens`, a worker's prefill capacity is learned: what it
         * prefills in this long at its measured speed. Queued prefill beyond it means every new
         * request would wait at least this long in the engine's queue.
         */
        prefillQueueMs: z.number().int().min(1).default(2000),
        /**
         * A request whose cached pick is saturated on prefill, while another worker has room, and
         * for which staying is predicted better than moving (place.ts, `affinityChoice`), joins its
         * pick at once when the prefill it adds there is at most `affinityOverflow - 1` times the
         * pick's capacity (the delay it puts ahead of later requests, whatever their class), instead
         * of waiting in the gateway for room there. 1 turns it off (it waits; see `affinityWaitMs`).
         */
        affinityOverflow: z.number().min(1).max(10).default(2),
      })
      .prefault({}),
    prediction: z
      .strictObject({
        /** Prefill speed assumed for a worker before any TTFT was observed on it. */
        initialTokensPerSecond: z.number().min(1).default(10_000),
        /** Fixed TTFT part assumed before any was observed (scheduling, network). */
        initialOverheadMs: z.number().min(0).default(20),
        /** Weight of the past in the per-worker fit (per observation); lower forgets faster. */
        decay: z.number().gt(0).lt(1).default(0.95),
      })
      .prefault({}),
    /**
     * The longest a request waits in the gateway for its worker (the strategy's pick, where its
     * prefix is cached) while that is saturated and another candidate has room (counted from when
     * room appeared elsewhere). Until then it moves, joins its pick or waits as its predicted TTFTs
     * say (place.ts, `affinityChoice`): it moves when that saves it more than recomputing its
     * prefix costs the requests of its class or a higher one that would use the room (nothing, when
     * only a lower class or nobody would). A move that gives up nothing is made at once.
     */
    affinityWaitMs: z.number().int().min(0).default(10_000),
    /** How often held requests are re-checked when no request finishing wakes them. */
    pollMs: z.number().int().min(1).max(1000).default(20),
  })
  .superRefine((f, ctx) => {
    const names = new Set<string>();
    f.classes.forEach((c, i) => {
      if (names.has(c.name))
        ctx.addIssue({ code: 'custom', path: ['classes', i, 'name'], message: `duplicate class '${c.name}'` });
      names.add(c.name);
    });
    const known = [...names].join(', ');
    if (!names.has(f.defaultClass))
      ctx.addIssue({
        code: 'custom',
        path: ['defaultClass'],
        message: `'${f.defaultClass}' is not a class (classes: ${known})`,
      });
    for (const [key, v] of Object.entries(f.apiKeys)) {
      if (v.class !== undefined && !names.has(v.class))
        ctx.addIssue({
          code: 'custom',
          path: ['apiKeys', `${key.slice(0, 4)}...`, 'class'],
          message: `'${v.class}' is not a class (classes: ${known})`,
        });
    }
  });
export type FlowConfig = z.infer<typeof flowConfigSchema>;
