import { z } from 'zod';
import type { DiscoveredWorker, Discovery } from './discovery.js';

export const staticDiscoveryConfigSchema = z.strictObject({
  /** The workers are `fleet.workers`, fixed for the process's life. */
  type: z.literal('static'),
});

/** A `fleet.workers[]` entry after parsing (structurally; no import of fleet.ts, which would make a cycle once the fleet schema embeds discovery). */
export interface StaticWorker {
  id: string;
  url: string;
  models: readonly string[];
  role: DiscoveredWorker['role'];
  labels: Readonly<Record<string, string>>;
  kvEvents?: unknown;
}

/** The configured list, emitted once, so the fleet has one code path for every source. */
export class StaticDiscovery implements Discovery {
  readonly name = 'static';
  readonly #workers: DiscoveredWorker[];

  constructor(workers: readonly StaticWorker[]) {
    this.#workers = workers.map((w) => {
      const d: DiscoveredWorker = {
        id: w.id,
        url: w.url,
        models: [...w.models],
        role: w.role,
        labels: { ...w.labels },
      };
      const kv = zmqEndpoints(w.kvEvents);
      if (kv !== undefined) d.kvEvents = kv;
      return d;
    });
  }

  async start(onChange: (workers: DiscoveredWorker[]) => void): Promise<void> {
    onChange(this.#workers.map((w) => structuredClone(w)));
  }

  async stop(): Promise<void> {}
}

/**
 * `DiscoveredWorker.kvEvents` describes ZeroMQ streams only; a trtllm-http
 * block (polling, no endpoint) is left out here and must be taken from the
 * static config itself by the fleet.
 */
function zmqEndpoints(kv: unknown): DiscoveredWorker['kvEvents'] {
  if (typeof kv !== 'object' || kv === null) return undefined;
  const k = kv as { type?: unknown; endpoint?: unknown; replayEndpoint?: unknown; topic?: unknown };
  if (typeof k.endpoint !== 'string' || (k.type !== undefined && k.type !== 'zmq')) return undefined;
  const out: NonNullable<DiscoveredWorker['kvEvents']> = { endpoint: k.endpoint };
  if (typeof k.replayEndpoint === 'string') out.replayEndpoint = k.replayEndpoint;
  if (typeof k.topic === 'string') out.topic = k.topic;
  return out;
}
