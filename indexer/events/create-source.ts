import type { Logger } from 'pino';
import { z } from 'zod';
import { PAYLOAD_FORMAT_NAMES } from './formats.js';
import { offsetPort, RankedEventSource } from './ranked-source.js';
import type { EventSource } from './source.js';
import { TrtllmPollSource } from './trtllm-source.js';
import { ZmqEventSource } from './zmq-source.js';

const zmqEndpoint = z
  .string()
  .regex(/^(tcp|ipc|inproc):\/\/.+/, 'must be a ZeroMQ endpoint such as tcp://127.0.0.1:5557');

const rankEndpointsSchema = z.strictObject({ endpoint: zmqEndpoint, replayEndpoint: zmqEndpoint.optional() });

export const zmqEventSourceConfigSchema = z
  .strictObject({
    type: z.literal('zmq'),
    /** The engine's PUB endpoint (vLLM/SGLang `endpoint`, with the worker's host instead of `*`). */
    endpoint: zmqEndpoint,
    replayEndpoint: zmqEndpoint.optional(),
    topic: z.string().default(''),
    mode: z.enum(['connect', 'bind']).default('connect'),
    /** Payload format of frame 3 (see formats.ts). */
    format: z.enum(PAYLOAD_FORMAT_NAMES).default('msgpack'),
    /** How long a replay may go without sending a batch before it is abandoned. */
    replayTimeoutMs: z.number().int().min(10).default(2000),
    /** Replay probe period while connected (0: off); bounds how long a quiet loss or a hidden restart goes unnoticed. */
    probeIntervalMs: z.number().int().min(0).default(5000),
    /**
     * Data-parallel ranks of this worker, vLLM's way: rank r publishes on `endpoint`'s port + r and replays on
     * `replayEndpoint`'s port + r. Each rank is its own subscription, sequence and replay, and its own target.
     */
    dataParallelSize: z.number().int().min(1).max(1024).optional(),
    /** Or each rank's endpoints, in rank order, when they do not follow vLLM's offsets (`endpoint` is then rank 0's). */
    ranks: z.array(rankEndpointsSchema).min(1).optional(),
  })
  .superRefine((c, ctx) => {
    if (c.dataParallelSize !== undefined && c.ranks !== undefined)
      ctx.addIssue({ code: 'custom', path: ['ranks'], message: 'give dataParallelSize or ranks, not both' });
    const n = c.dataParallelSize ?? 1;
    if (n > 1 && c.replayEndpoint !== undefined) {
      const port = (e: string) => Number(/:(\d+)$/.exec(e)?.[1] ?? NaN);
      const pub = port(c.endpoint);
      const rep = port(c.replayEndpoint);
      if (!Number.isFinite(pub) || !Number.isFinite(rep))
        ctx.addIssue({ code: 'custom', path: ['dataParallelSize'], message: 'needs tcp://host:port endpoints' });
      else if (Math.abs(pub - rep) < n)
        ctx.addIssue({
          code: 'custom',
          path: ['replayEndpoint'],
          message: `with dataParallelSize ${n}, publish ports ${pub}..${pub + n - 1} and replay ports ${rep}..${rep + n - 1} overlap; put the replay port at least ${n} away`,
        });
    }
  });

export const trtllmEventSourceConfigSchema = z.strictObject({
  type: z.literal('trtllm-http'),
  /** trtllm-serve base URL; defaults to the worker's own URL. */
  url: z.url({ protocol: /^https?$/ }).optional(),
  intervalMs: z.number().int().min(10).default(100),
  format: z.enum(PAYLOAD_FORMAT_NAMES).default('trtllm-json'),
  /** Tokens per KV block; inferred from the events when absent. */
  blockSize: z.number().int().min(1).optional(),
});

/** A worker's `kvEvents` block; `type` defaults to `zmq`, so `{endpoint, replayEndpoint, topic}` alone works. */
export const eventSourceConfigSchema = z.preprocess(
  (v) => (typeof v === 'object' && v !== null && !Array.isArray(v) && !('type' in v) ? { ...v, type: 'zmq' } : v),
  z.discriminatedUnion('type', [zmqEventSourceConfigSchema, trtllmEventSourceConfigSchema]),
);
export type EventSourceConfig = z.infer<typeof eventSourceConfigSchema>;

interface SourceDefaults {
  workerUrl?: string;
  now?: () => number;
}

type Transport<C> = (c: C, workerId: string, log: Logger | undefined, defaults: SourceDefaults) => EventSource;
type ConfigOf<T extends EventSourceConfig['type']> = Extract<EventSourceConfig, { type: T }>;

/**
 * Transports by config `type`. A new transport is its file, its schema in the
 * union above, and one line here; the payload format is chosen separately by `format`.
 */
const TRANSPORTS: { [T in EventSourceConfig['type']]: Transport<ConfigOf<T>> } = {
  zmq: (c, workerId, log, d) => {
    const one = (endpoint: string, replayEndpoint: string | undefined, rank?: number) =>
      new ZmqEventSource({
        workerId,
        endpoint,
        replayEndpoint,
        rank,
        topic: c.topic,
        mode: c.mode,
        format: c.format,
        replayTimeoutMs: c.replayTimeoutMs,
        probeIntervalMs: c.probeIntervalMs,
        log,
        now: d.now,
      });
    if (c.ranks !== undefined)
      return new RankedEventSource(
        workerId,
        c.ranks.map((r, i) => one(r.endpoint, r.replayEndpoint, i)),
      );
    const n = c.dataParallelSize;
    if (n === undefined) return one(c.endpoint, c.replayEndpoint);
    return new RankedEventSource(
      workerId,
      Array.from({ length: n }, (_, r) =>
        one(offsetPort(c.endpoint, r), c.replayEndpoint === undefined ? undefined : offsetPort(c.replayEndpoint, r), r),
      ),
    );
  },
  'trtllm-http': (c, workerId, log, d) => {
    const url = c.url ?? d.workerUrl;
    if (url === undefined)
      throw new Error(`worker ${workerId}: trtllm-http kv events need a url (or the worker's url)`);
    return new TrtllmPollSource({
      workerId,
      url,
      intervalMs: c.intervalMs,
      blockSize: c.blockSize,
      format: c.format,
      log,
      now: d.now,
    });
  },
};

/**
 * Builds the adapter for one worker. `config` is the parsed schema output, or raw
 * input (it is parsed here, so a bad block throws a zod error naming the field).
 */
export function createEventSource(
  config: EventSourceConfig | Record<string, unknown>,
  workerId: string,
  log?: Logger,
  defaults: SourceDefaults = {},
): EventSource {
  const c = eventSourceConfigSchema.parse(config);
  return (TRANSPORTS[c.type] as Transport<EventSourceConfig>)(c, workerId, log, defaults);
}
