import type { Logger } from 'pino';
import { z } from 'zod';
import { ChangeEmitter } from './changes.js';
import type { DiscoveredWorker, Discovery } from './discovery.js';
import { workersFromSlices, type EndpointSlice, type ObjectMeta } from './endpoint-slices.js';
import {
  connectKube,
  KubeApiError,
  KubeConfigError,
  kubeGet,
  kubeGetJson,
  type KubeConnection,
  type KubeEnvironment,
} from './kube-api.js';
import { workerTemplateSchema } from './template.js';

export const kubernetesDiscoveryConfigSchema = z
  .strictObject({
    type: z.literal('kubernetes'),
    /** Default: the service account's namespace in-cluster, the context's from a kubeconfig, else `default`. */
    namespace: z.string().min(1).optional(),
    /** Selects the Service's EndpointSlices (`kubernetes.io/service-name=<service>`). */
    service: z.string().min(1).optional(),
    /** Or any label selector over EndpointSlices, e.g. `kvgate.io/pool=qwen3`. */
    labelSelector: z.string().min(1).optional(),
    /** The engines' HTTP port: a number, or the name of a Service port. Default: the port named `http`, or the only one. */
    port: z.union([z.number().int().min(1).max(65535), z.string().min(1)]).optional(),
    /**
     * Instead of `port`, an InferencePool's `targetPorts` (1 to 8, unique numbers): one worker per
     * Pod IP and port, so data-parallel ranks serving on their own ports are separate endpoints.
     */
    targetPorts: z
      .array(z.strictObject({ number: z.number().int().min(1).max(65535) }))
      .min(1)
      .max(8)
      .refine((ps) => new Set(ps.map((p) => p.number)).size === ps.length, 'port numbers must be unique')
      .optional(),
    /** A kubeconfig file; default: in-cluster credentials, else `$KUBECONFIG` / `~/.kube/config`. */
    kubeconfig: z.string().min(1).optional(),
    context: z.string().min(1).optional(),
    /** Read each endpoint's Pod for its `kvgate.io/*` annotations and labels (needs `get` on pods). */
    readPods: z.boolean().default(true),
    /** The API server ends each watch after this long; the watch then resumes from the last resourceVersion. */
    watchTimeoutSeconds: z.number().int().min(1).max(3600).default(290),
    backoff: z
      .strictObject({
        initialMs: z.number().int().min(1).default(500),
        maxMs: z.number().int().min(1).default(30_000),
      })
      .prefault({}),
    ...workerTemplateSchema,
  })
  .refine((c) => c.service !== undefined || c.labelSelector !== undefined, {
    message: 'kubernetes discovery needs `service` or `labelSelector`',
    path: ['service'],
  })
  .refine((c) => c.port === undefined || c.targetPorts === undefined, {
    message: 'kubernetes discovery takes `port` or `targetPorts`, not both',
    path: ['targetPorts'],
  });
export type KubernetesDiscoveryConfig = z.infer<typeof kubernetesDiscoveryConfigSchema>;

interface SliceList {
  metadata: { resourceVersion: string };
  items: EndpointSlice[];
}
interface WatchEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: EndpointSlice & { code?: number; message?: string };
}

/** The stored resourceVersion is too old (410 Gone): list again. */
const GONE = Symbol('gone');

/**
 * Watches the EndpointSlices of the selected Service(s): list, then watch from
 * the list's resourceVersion, resume each watch from the last version seen,
 * list again on 410 Gone, and back off (exponential, jittered) on errors.
 * Every change is mapped to the whole worker list (`workersFromSlices`) and
 * emitted when it differs from the last.
 */
export class KubernetesDiscovery implements Discovery {
  readonly name = 'kubernetes';
  readonly #c: KubernetesDiscoveryConfig;
  readonly #log: Logger | undefined;
  readonly #random: () => number;
  readonly #kenv: KubeEnvironment | undefined;
  readonly #emitter: ChangeEmitter;
  readonly #slices = new Map<string, EndpointSlice>();
  readonly #pods = new Map<string, ObjectMeta>();
  readonly #reported = new Set<string>();
  #conn: KubeConnection | undefined;
  #namespace = 'default';
  #abort = new AbortController();
  #running: Promise<void> | undefined;
  #readPods: boolean;

  constructor(
    config: KubernetesDiscoveryConfig,
    deps: { env?: KubeEnvironment | undefined; log?: Logger | undefined; random?: (() => number) | undefined } = {},
  ) {
    this.#c = config;
    this.#log = deps.log;
    this.#random = deps.random ?? Math.random;
    this.#kenv = deps.env;
    this.#readPods = config.readPods;
    this.#emitter = new ChangeEmitter(deps.log, 'kubernetes');
  }

  /** Rejects only on bad credentials or config (`KubeConfigError`); an unreachable API server is retried in the background. */
  async start(onChange: (workers: DiscoveredWorker[]) => void): Promise<void> {
    const conn = connectKube({ kubeconfig: this.#c.kubeconfig, context: this.#c.context }, this.#kenv);
    this.#conn = conn;
    this.#namespace = this.#c.namespace ?? conn.namespace ?? 'default';
    this.#abort = new AbortController();
    this.#emitter.attach(onChange);
    let firstAttempt!: () => void;
    const attempted = new Promise<void>((resolve) => (firstAttempt = resolve));
    this.#running = this.#run(conn, firstAttempt);
    await attempted;
  }

  async stop(): Promise<void> {
    this.#emitter.detach();
    this.#abort.abort();
    await this.#running;
    await this.#conn?.close();
    this.#conn = undefined;
  }

  get #selector(): string {
    const parts: string[] = [];
    if (this.#c.service !== undefined) parts.push(`kubernetes.io/service-name=${this.#c.service}`);
    if (this.#c.labelSelector !== undefined) parts.push(this.#c.labelSelector);
    return parts.join(',');
  }

  #path(extra: Record<string, string>): string {
    const q = new URLSearchParams({ labelSelector: this.#selector, ...extra });
    return `/apis/discovery.k8s.io/v1/namespaces/${encodeURIComponent(this.#namespace)}/endpointslices?${q.toString()}`;
  }

  async #run(conn: KubeConnection, firstAttempt: () => void): Promise<void> {
    const signal = this.#abort.signal;
    let version: string | undefined;
    let failures = 0;
    while (!signal.aborted) {
      try {
        if (version === undefined) {
          version = await this.#list(conn, signal);
          firstAttempt();
        }
        const started = Date.now();
        const result = await this.#watch(conn, version, signal);
        if (result === GONE) {
          this.#log?.info(
            { namespace: this.#namespace },
            'kubernetes discovery: resourceVersion expired (410 Gone); listing again',
          );
          version = undefined;
          continue;
        }
        // A watch that ends at once with nothing in it would otherwise make a tight loop.
        if (result.events > 0 || Date.now() - started > 1000) failures = 0;
        else await this.#sleep(++failures, signal);
        version = result.version;
      } catch (err) {
        firstAttempt();
        if (signal.aborted) break;
        failures++;
        const e = err as Error;
        this.#log?.warn(
          { namespace: this.#namespace, selector: this.#selector, err: e.message, attempt: failures },
          'kubernetes discovery: API request failed; retrying',
        );
        if (err instanceof KubeApiError && err.status === 410) version = undefined;
        await this.#sleep(failures, signal);
      }
    }
  }

  async #list(conn: KubeConnection, signal: AbortSignal): Promise<string> {
    const list = await kubeGetJson<SliceList>(conn, this.#path({}), { signal });
    this.#slices.clear();
    for (const s of list.items ?? []) this.#slices.set(s.metadata.name, s);
    await this.#update(conn, signal);
    return list.metadata.resourceVersion;
  }

  /** Applies watch events until the server ends the stream; returns the last resourceVersion seen, or GONE. */
  async #watch(
    conn: KubeConnection,
    version: string,
    signal: AbortSignal,
  ): Promise<{ version: string; events: number } | typeof GONE> {
    const path = this.#path({
      watch: '1',
      resourceVersion: version,
      allowWatchBookmarks: 'true',
      timeoutSeconds: String(this.#c.watchTimeoutSeconds),
    });
    let body;
    try {
      body = await kubeGet(conn, path, { signal, bodyTimeoutMs: (this.#c.watchTimeoutSeconds + 60) * 1000 });
    } catch (err) {
      if (err instanceof KubeApiError && err.status === 410) return GONE;
      throw err;
    }
    let events = 0;
    let buffered = '';
    body.setEncoding('utf8');
    for await (const chunk of body as AsyncIterable<string>) {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) !== -1) {
        const line = buffered.slice(0, nl).trim();
        buffered = buffered.slice(nl + 1);
        if (line === '') continue;
        const event = JSON.parse(line) as WatchEvent;
        if (event.type === 'ERROR') {
          body.destroy();
          if (event.object.code === 410) return GONE;
          throw new KubeApiError(
            event.object.code ?? 500,
            `watch error: ${event.object.message ?? line.slice(0, 200)}`,
          );
        }
        events++;
        const meta = event.object.metadata;
        if (meta.resourceVersion !== undefined) version = meta.resourceVersion;
        if (event.type === 'BOOKMARK') continue;
        if (event.type === 'DELETED') this.#slices.delete(meta.name);
        else this.#slices.set(meta.name, event.object);
        await this.#update(conn, signal);
      }
    }
    return { version, events };
  }

  /** Recomputes the worker list from the slices (reading Pods not seen yet) and emits it if it changed. */
  async #update(conn: KubeConnection, signal: AbortSignal): Promise<void> {
    if (this.#readPods) await this.#fetchPods(conn, signal);
    const { workers, problems } = workersFromSlices(this.#slices.values(), this.#pods, {
      port: this.#c.port,
      targetPorts: this.#c.targetPorts?.map((p) => p.number),
      scheme: this.#c.scheme,
      models: this.#c.models,
      role: this.#c.role,
      labels: this.#c.labels,
      kvEvents: this.#c.kvEvents,
    });
    for (const p of problems) this.#reportOnce(p);
    if (!signal.aborted) this.#emitter.emit(workers);
  }

  async #fetchPods(conn: KubeConnection, signal: AbortSignal): Promise<void> {
    const wanted = new Map<string, string | undefined>();
    for (const s of this.#slices.values()) {
      for (const ep of s.endpoints ?? [])
        if (ep.targetRef?.kind === 'Pod' && ep.targetRef.name) wanted.set(ep.targetRef.name, ep.targetRef.uid);
    }
    for (const name of this.#pods.keys()) if (!wanted.has(name)) this.#pods.delete(name);
    for (const [name, uid] of wanted) {
      const known = this.#pods.get(name);
      if (known !== undefined && (uid === undefined || known.uid === uid)) continue;
      try {
        const pod = await kubeGetJson<{ metadata: ObjectMeta }>(
          conn,
          `/api/v1/namespaces/${encodeURIComponent(this.#namespace)}/pods/${encodeURIComponent(name)}`,
          { signal },
        );
        this.#pods.set(name, pod.metadata);
      } catch (err) {
        if (err instanceof KubeApiError && (err.status === 401 || err.status === 403)) {
          // Without RBAC on pods, run on the EndpointSlices' labels and the config alone rather than not at all.
          this.#readPods = false;
          this.#log?.warn(
            { err: err.message },
            'kubernetes discovery: cannot read pods; using EndpointSlice labels and the config for roles and ports',
          );
          return;
        }
        if (err instanceof KubeApiError && err.status === 404) continue; // gone already; its endpoint goes next
        throw err;
      }
    }
  }

  #reportOnce(problem: string): void {
    if (this.#reported.has(problem)) return;
    this.#reported.add(problem);
    this.#log?.warn({ problem }, 'kubernetes discovery: ignored a setting');
  }

  /** Exponential backoff with full jitter between half and all of the step. */
  #sleep(failures: number, signal: AbortSignal): Promise<void> {
    const { initialMs, maxMs } = this.#c.backoff;
    const step = Math.min(maxMs, initialMs * 2 ** Math.min(failures - 1, 20));
    const ms = step / 2 + (step / 2) * this.#random();
    return new Promise((resolve) => {
      if (signal.aborted) return resolve();
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        resolve();
      }
      signal.addEventListener('abort', done, { once: true });
    });
  }
}

export { KubeConfigError };
