import { z } from 'zod';
import type { DiscoveredWorker } from './discovery.js';

/**
 * What every discovered worker inherits when the source (a DNS record, an
 * EndpointSlice) says nothing more: served models, role, labels, and the ports
 * of its KV event streams. Kubernetes annotations override these per Pod.
 */
export const workerTemplateSchema = {
  /** Models served by every discovered worker (Kubernetes: overridden by the `kvgate.io/models` annotation). */
  models: z.array(z.string().min(1)).min(1),
  role: z.enum(['both', 'prefill', 'decode']).default('both'),
  labels: z.record(z.string(), z.string()).default({}),
  scheme: z.enum(['http', 'https']).default('http'),
  /**
   * The engines' ZeroMQ KV events, on each worker's own address: vLLM's
   * `"endpoint": "tcp://*:5557"` binds there, so the gateway connects to `tcp://<address>:5557`.
   */
  kvEvents: z
    .strictObject({
      port: z.number().int().min(1).max(65535),
      replayPort: z.number().int().min(1).max(65535).optional(),
      topic: z.string().optional(),
    })
    .optional(),
};

/** `http://10.0.0.1:8000`, `http://[fd00::1]:8000`: IPv6 literals need brackets in URLs and ZeroMQ endpoints. */
export function hostPort(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}

/** The KV event endpoints of a worker at `address`, or undefined when it publishes none. */
export function kvEventsAt(
  address: string,
  ports: { port?: number | undefined; replayPort?: number | undefined; topic?: string | undefined },
): DiscoveredWorker['kvEvents'] {
  if (ports.port === undefined) return undefined;
  const kv: NonNullable<DiscoveredWorker['kvEvents']> = { endpoint: `tcp://${hostPort(address, ports.port)}` };
  if (ports.replayPort !== undefined) kv.replayEndpoint = `tcp://${hostPort(address, ports.replayPort)}`;
  if (ports.topic !== undefined) kv.topic = ports.topic;
  return kv;
}

/** A worker id the fleet schema accepts (letters, digits, `. _ : -`), derived from a name or an address. */
export function workerId(...parts: string[]): string {
  return parts
    .filter((p) => p !== '')
    .join('-')
    .replace(/[^A-Za-z0-9._:-]/g, '_');
}

/** Workers sorted by id with sorted keys, so two lists compare equal exactly when they describe the same fleet. */
export function canonical(workers: readonly DiscoveredWorker[]): string {
  const sorted = [...workers].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return JSON.stringify(sorted, (_key, value: unknown) =>
    value !== null && typeof value === 'object' && !Array.isArray(value)
      ? Object.fromEntries(Object.entries(value).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : value,
  );
}
