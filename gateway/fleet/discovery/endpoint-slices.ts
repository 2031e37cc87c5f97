import type { DiscoveredWorker } from './discovery.js';
import { hostPort, kvEventsAt, workerId } from './template.js';

/** The parts of a `discovery.k8s.io/v1` EndpointSlice this module reads. */
export interface EndpointSlice {
  metadata: ObjectMeta;
  addressType: 'IPv4' | 'IPv6' | 'FQDN';
  endpoints?: Endpoint[] | null;
  ports?: { name?: string; port?: number; protocol?: string }[] | null;
}

export interface Endpoint {
  addresses: string[];
  conditions?: { ready?: boolean | null; serving?: boolean | null; terminating?: boolean | null };
  targetRef?: { kind?: string; name?: string; namespace?: string; uid?: string };
}

export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

/**
 * Per-worker settings, read from the target Pod's annotations or labels first,
 * then the EndpointSlice's (which carries the Service's labels), then the
 * discovery config.
 */
export const ANNOTATIONS = {
  role: 'kvgate.io/role',
  models: 'kvgate.io/models',
  kvEventsPort: 'kvgate.io/kv-events-port',
  kvReplayPort: 'kvgate.io/kv-replay-port',
  kvEventsTopic: 'kvgate.io/kv-events-topic',
} as const;

/** Service port names that stand in for the port annotations. */
export const PORT_NAMES = { http: 'http', kvEvents: 'kv-events', kvReplay: 'kv-replay' } as const;

export interface SliceDefaults {
  port?: number | string | undefined;
  /**
   * InferencePool `targetPorts`: every port of every Pod is its own worker (`<pod>-<port>` when
   * there are several), as the Inference Extension's EPP treats each `podIP:port` as an endpoint.
   */
  targetPorts?: readonly number[] | undefined;
  scheme: 'http' | 'https';
  models: string[];
  role: DiscoveredWorker['role'];
  labels: Record<string, string>;
  kvEvents?: { port: number; replayPort?: number | undefined; topic?: string | undefined } | undefined;
}

/**
 * Ready endpoints of every slice, one worker each (one per target port with
 * `targetPorts`). Workers are keyed by Pod name (stable across the IPv4 and
 * IPv6 slices of a dual-stack Service); an endpoint without a Pod behind it is
 * keyed by its address. `problems` are settings that were ignored, for the
 * caller to log.
 */
export function workersFromSlices(
  slices: Iterable<EndpointSlice>,
  pods: ReadonlyMap<string, ObjectMeta>,
  d: SliceDefaults,
): { workers: DiscoveredWorker[]; problems: string[] } {
  const problems: string[] = [];
  const byId = new Map<string, DiscoveredWorker>();
  // IPv4 first, then by name: the same input always yields the same list.
  const ordered = [...slices].sort(
    (a, b) => a.addressType.localeCompare(b.addressType) || a.metadata.name.localeCompare(b.metadata.name),
  );
  for (const slice of ordered) {
    if (slice.addressType === 'FQDN') continue;
    for (const ep of slice.endpoints ?? []) {
      // The API: "a nil value indicates an unknown state ... consumers should interpret this as ready".
      if (ep.conditions?.ready === false || ep.addresses.length === 0) continue;
      const address = ep.addresses[0]!;
      const pod =
        ep.targetRef?.kind === 'Pod' && ep.targetRef.name !== undefined ? pods.get(ep.targetRef.name) : undefined;
      const base =
        ep.targetRef?.kind === 'Pod' && ep.targetRef.name !== undefined
          ? workerId(ep.targetRef.name)
          : workerId(slice.metadata.name, address);
      const multi = d.targetPorts !== undefined && d.targetPorts.length > 1;
      // The Pod seen already (the other address family of a dual-stack Service).
      if (byId.has(multi ? workerId(base, String(d.targetPorts![0])) : base)) continue;
      const setting = (key: string): string | undefined =>
        pod?.annotations?.[key] ??
        pod?.labels?.[key] ??
        slice.metadata.annotations?.[key] ??
        slice.metadata.labels?.[key];
      const where = `${slice.metadata.name}/${base}`;

      const port = d.targetPorts?.[0] ?? httpPort(slice, d.port);
      if (port === undefined) {
        problems.push(
          `${where}: no port ${d.port === undefined ? `named '${PORT_NAMES.http}' (and more than one port)` : `'${d.port}'`} in the EndpointSlice; skipped`,
        );
        continue;
      }
      const role = setting(ANNOTATIONS.role) ?? d.role;
      const validRole = role === 'both' || role === 'prefill' || role === 'decode';
      if (!validRole)
        problems.push(`${where}: ${ANNOTATIONS.role} '${role}' is not both, prefill or decode; using '${d.role}'`);
      const models = (setting(ANNOTATIONS.models) ?? '')
        .split(',')
        .map((m) => m.trim())
        .filter((m) => m !== '');

      const kvPort =
        intSetting(setting(ANNOTATIONS.kvEventsPort), `${where}: ${ANNOTATIONS.kvEventsPort}`, problems) ??
        namedPort(slice, PORT_NAMES.kvEvents) ??
        d.kvEvents?.port;
      const replayPort =
        intSetting(setting(ANNOTATIONS.kvReplayPort), `${where}: ${ANNOTATIONS.kvReplayPort}`, problems) ??
        namedPort(slice, PORT_NAMES.kvReplay) ??
        d.kvEvents?.replayPort;
      const topic = setting(ANNOTATIONS.kvEventsTopic) ?? d.kvEvents?.topic;

      const ports = d.targetPorts ?? [port];
      for (const [rank, p] of ports.entries()) {
        const id = multi ? workerId(base, String(p)) : base;
        const worker: DiscoveredWorker = {
          id,
          url: `${d.scheme}://${hostPort(address, p)}`,
          models: models.length > 0 ? models : [...d.models],
          role: validRole ? role : d.role,
          labels: { ...d.labels, ...(pod?.labels ?? {}) },
        };
        // Data-parallel ranks publish KV events on the base ports plus their rank, as vLLM offsets them.
        const kv = kvEventsAt(address, {
          port: kvPort === undefined ? undefined : kvPort + rank,
          replayPort: replayPort === undefined ? undefined : replayPort + rank,
          topic,
        });
        if (kv !== undefined) worker.kvEvents = kv;
        byId.set(id, worker);
      }
    }
  }
  return { workers: [...byId.values()], problems };
}

function httpPort(slice: EndpointSlice, wanted: number | string | undefined): number | undefined {
  if (typeof wanted === 'number') return wanted;
  if (typeof wanted === 'string') return namedPort(slice, wanted);
  const ports = slice.ports ?? [];
  return namedPort(slice, PORT_NAMES.http) ?? (ports.length === 1 ? ports[0]!.port : undefined);
}

function namedPort(slice: EndpointSlice, name: string): number | undefined {
  return (slice.ports ?? []).find((p) => p.name === name)?.port;
}

function intSetting(value: string | undefined, what: string, problems: string[]): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (Number.isInteger(n) && n >= 1 && n <= 65535) return n;
  problems.push(`${what} '${value}' is not a port number; ignored`);
  return undefined;
}
