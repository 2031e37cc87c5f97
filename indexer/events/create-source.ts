import type { Logger } from 'pino';
import { z } from 'zod';
import type { EventSource } from './source.js';
import { TrtllmPollSource } from './trtllm-source.js';
import { ZmqEventSource } from './zmq-source.js';

const zmqEndpoint = z
  .string()
  .regex(/^(tcp|ipc|inproc):\/\/.+/, 'must be a ZeroMQ endpoint such as tcp://127.0.0.1:5557');

export const zmqEventSourceConfigSchema = z.strictObject({
  type: z.literal('zmq'),
  /** The engine's PUB endpoint (vLLM/SGLang `endpoint`, with the worker's host instead of `*`). */
  endpoint: zmqEndpoint,
  replayEndpoint: zmqEndpoint.optional(),
  topic: z.string().default(''),
  mode: z.enum(['connect', 'bind']).default('connect'),
  replayTimeoutMs: z.number().int().min(10).default(2000),
});

export const trtllmEventSourceConfigSchema = z.strictObject({
  type: z.literal('trtllm-http'),
  /** trtllm-serve base URL; defaults to the worker's own URL. */
  url: z.url({ protocol: /^https?$/ }).optional(),
  intervalMs: z.number().int().min(10).default(100),
  /** Tokens per KV block; inferred from the events when absent. */
  blockSize: z.number().int().min(1).optional(),
});

/** A worker's `kvEvents` block; `type` defaults to `zmq`, so `{endpoint, replayEndpoint, topic}` alone works. */
export const eventSourceConfigSchema = z.preprocess(
  (v) => (typeof v === 'object' && v !== null && !Array.isArray(v) && !('type' in v) ? { ...v, type: 'zmq' } : v),
  z.discriminatedUnion('type', [zmqEventSourceConfigSchema, trtllmEventSourceConfigSchema]),
);
export type EventSourceConfig = z.infer<typeof eventSourceConfigSchema>;

/**
 * Builds the adapter for one worker. `config` is the parsed schema output, or raw
 * input (it is parsed here, so a bad block throws a zod error naming the field).
 */
export function createEventSource(
  // eslint-disable-next-line @typescript-eslint/no-redundant-type-constituents -- the union documents what callers pass
  config: EventSourceConfig | z.input<typeof eventSourceConfigSchema>,
  workerId: string,
  log?: Logger,
  defaults: { workerUrl?: string; now?: () => number } = {},
): EventSource {
  const c = eventSourceConfigSchema.parse(config);
  if (c.type === 'zmq') {
    return new ZmqEventSource({
      workerId,
      endpoint: c.endpoint,
      replayEndpoint: c.replayEndpoint,
      topic: c.topic,
      mode: c.mode,
      replayTimeoutMs: c.replayTimeoutMs,
      log,
      now: defaults.now,
    });
  }
  const url = c.url ?? defaults.workerUrl;
  if (url === undefined) throw new Error(`worker ${workerId}: trtllm-http kv events need a url (or the worker's url)`);
  return new TrtllmPollSource({
    workerId,
    url,
    intervalMs: c.intervalMs,
    blockSize: c.blockSize,
    log,
    now: defaults.now,
  });
}
