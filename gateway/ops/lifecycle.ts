import { createHash } from 'node:crypto';
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import type { IncomingMessage, RequestListener, Server, ServerResponse } from 'node:http';
import { basename, dirname } from 'node:path';
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import { loadConfigFile } from '../../config/load.js';
import type { Fleet } from '../fleet/fleet.js';
import type { Gateway } from '../gateway.js';

/**
 * Wraps the front's request handler to know what is in flight, so SIGTERM can
 * drain: once draining, `/ready` answers 503 (an endpoint controller stops
 * sending), every response carries `connection: close` (keep-alive clients
 * reconnect elsewhere), and `drain` waits for the in-flight responses.
 */
export class FrontTracker {
  readonly #active = new Set<ServerResponse>();
  #draining = false;
  #idle: (() => void) | undefined;
  readonly handler: RequestListener;

  constructor(inner: (req: IncomingMessage, res: ServerResponse) => void) {
    const active = this.#active;
    // One shared listener (`this` is the response): nothing allocated per request.
    const release = function (this: ServerResponse): void {
      active.delete(this);
      if (active.size === 0) self.#idle?.();
    };
    const self = this;
    this.handler = (req, res) => {
      if (this.#draining) {
        res.setHeader('connection', 'close');
        if (req.url === '/ready' || req.url?.startsWith('/ready?')) {
          const body = JSON.stringify({ ready: false, draining: true });
          res.writeHead(503, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
          res.end(body);
          return;
        }
      }
      active.add(res);
      res.once('close', release);
      inner(req, res);
    };
  }

  get draining(): boolean {
    return this.#draining;
  }

  get inflight(): number {
    return this.#active.size;
  }

  /** Stops accepting, waits for in-flight responses (streams included) up to `timeoutMs`, then cuts the rest. */
  async drain(server: Server, timeoutMs: number, log: Logger): Promise<{ cut: number }> {
    if (!this.#draining) {
      this.#draining = true;
      for (const res of this.#active) if (!res.headersSent) res.setHeader('connection', 'close');
      log.info({ inflight: this.#active.size, timeoutMs }, 'gateway draining');
      // Closes the listening socket (new connections are refused) and the idle keep-alive ones.
      server.close();
    }
    const finished =
      this.#active.size === 0 ||
      (await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), timeoutMs);
        this.#idle = () => {
          clearTimeout(timer);
          resolve(true);
        };
      }));
    this.#idle = undefined;
    const cut = finished ? 0 : this.#active.size;
    if (cut > 0) log.warn({ cut, timeoutMs }, 'drain timeout: cutting the remaining requests');
    // Whatever is left is idle keep-alive or past its deadline.
    server.closeAllConnections();
    log.info({ cut }, 'gateway drained');
    return { cut };
  }
}

export interface LifecycleMetricsSources {
  readonly fleet: Fleet;
  readonly draining: () => boolean;
  readonly drainingWorkers: () => number;
  readonly discovered: () => number;
}

/** Fleet membership, discovery, reload and drain metrics; gauges read at scrape time. */
export function registerLifecycleMetrics(
  registry: Registry,
  s: LifecycleMetricsSources,
): { discoveryChange(added: number, removed: number, changed: number): void; reload(result: 'ok' | 'rejected'): void } {
  const registers = [registry];
  const changes = new Counter({
    name: 'kvgate_discovery_changes_total',
    help: 'Workers added, removed or changed by discovery',
    labelNames: ['kind'],
    registers,
  });
  for (const kind of ['added', 'removed', 'changed']) changes.inc({ kind }, 0);
  const reloads = new Counter({
    name: 'kvgate_config_reloads_total',
    help: 'Config reloads (SIGHUP, watched file), by result',
    labelNames: ['result'],
    registers,
  });
  for (const result of ['ok', 'rejected']) reloads.inc({ result }, 0);
  new Gauge({
    name: 'kvgate_discovered_workers',
    help: 'Workers the discovery source currently reports',
    registers,
    collect() {
      this.set(s.discovered());
    },
  });
  new Gauge({
    name: 'kvgate_fleet_workers',
    help: 'Workers in the fleet (static and discovered)',
    registers,
    collect() {
      this.set(s.fleet.workers.length);
    },
  });
  new Gauge({
    name: 'kvgate_draining_workers',
    help: 'Removed workers still finishing their in-flight requests',
    registers,
    collect() {
      this.set(s.drainingWorkers());
    },
  });
  new Gauge({
    name: 'kvgate_gateway_draining',
    help: '1 once the gateway drains for shutdown',
    registers,
    collect() {
      this.set(s.draining() ? 1 : 0);
    },
  });
  return {
    discoveryChange(added, removed, changed) {
      if (added) changes.inc({ kind: 'added' }, added);
      if (removed) changes.inc({ kind: 'removed' }, removed);
      if (changed) changes.inc({ kind: 'changed' }, changed);
    },
    reload: (result) => reloads.inc({ result }),
  };
}

/** Removes a departed worker's series from every per-worker gauge (counters keep their history). */
export function dropWorkerSeries(registry: Registry, id: string): void {
  for (const m of registry.getMetricsAsArray()) {
    const labels = (m as unknown as { labelNames?: readonly string[] }).labelNames;
    if (m instanceof Gauge && labels?.length === 1 && labels[0] === 'worker') m.remove({ worker: id });
  }
}

/** Sizes of the bounded caches that are not shown elsewhere: the tokenizers' (byte-bounded LRUs). */
export function registerMemoryMetrics(
  registry: Registry,
  tokenizers: ReadonlyMap<string, { stats(): { cacheBytes: number; cacheEntries: number } }>,
): void {
  const registers = [registry];
  new Gauge({
    name: 'kvgate_tokenizer_cache_bytes',
    help: 'Bytes held by the tokenization cache, per model (bounded by models.<m>.tokenCacheMiB)',
    labelNames: ['model'],
    registers,
    collect() {
      for (const [model, t] of tokenizers) this.set({ model }, t.stats().cacheBytes);
    },
  });
  new Gauge({
    name: 'kvgate_tokenizer_cache_entries',
    help: 'Entries in the tokenization cache, per model',
    labelNames: ['model'],
    registers,
    collect() {
      for (const [model, t] of tokenizers) this.set({ model }, t.stats().cacheEntries);
    },
  });
}

export interface LifecycleOptions {
  readonly gateway: Gateway;
  readonly log: Logger;
  readonly configFile: string;
  /** The environment the config was loaded with (flags folded in), for reloads. */
  readonly env: NodeJS.ProcessEnv;
  /** Reload when the file changes (besides SIGHUP). */
  readonly watch: boolean;
  readonly debounceMs?: number;
  /** Extra work on shutdown after the drain (discovery, event sources are closed by `gateway.close`). */
  readonly exit: (code: number) => void;
}

/**
 * The process around a running gateway: SIGHUP (and a changed config file when
 * watching) reloads, SIGTERM/SIGINT drains and exits 0. A second stop signal
 * while draining cuts the drain short.
 */
export function manageLifecycle(o: LifecycleOptions): {
  reload(): boolean;
  stop(signal: string): Promise<void>;
  dispose(): void;
} {
  const { gateway, log } = o;
  let lastHash = hashOf(o.configFile);
  const reload = (): boolean => {
    try {
      const config = loadConfigFile(o.configFile, o.env);
      const s = gateway.reload(config);
      lastHash = hashOf(o.configFile);
      gateway.countReload('ok');
      log.info(
        {
          strategy: s.strategy,
          policies: s.policies,
          experiments: s.experiments,
          added: s.added,
          removed: s.removed,
          changed: s.changed,
          workers: gateway.fleet.workers.length,
        },
        'config reloaded',
      );
      if (s.needsRestart.length > 0) log.warn({ keys: s.needsRestart }, 'config change needs a restart to take effect');
      return true;
    } catch (err) {
      gateway.countReload('rejected');
      log.error({ error: (err as Error).message }, 'config reload rejected');
      return false;
    }
  };
  let watcher: FSWatcher | undefined;
  let timer: NodeJS.Timeout | undefined;
  if (o.watch) {
    // The directory, not the file: editors and ConfigMap updates replace the file, which ends a watch on it.
    watcher = watch(dirname(o.configFile), (_event, name) => {
      if (name !== null && name !== basename(o.configFile) && !String(name).startsWith('..')) return;
      clearTimeout(timer);
      timer = setTimeout(() => {
        if (hashOf(o.configFile) === lastHash) return;
        log.info({ file: o.configFile }, 'config file changed');
        reload();
      }, o.debounceMs ?? 250);
    });
    watcher.on('error', (err) => log.warn({ error: err.message }, 'config watch failed'));
  }
  let stopping: Promise<void> | undefined;
  const stop = (signal: string): Promise<void> => {
    if (stopping) {
      log.warn({ signal }, 'second stop signal: exiting without waiting');
      o.exit(0);
      return stopping;
    }
    log.info({ signal }, 'gateway stopping');
    dispose();
    stopping = (async () => {
      try {
        await gateway.drain(gateway.config.server.drainTimeoutMs);
        await gateway.close();
        o.exit(0);
      } catch (err) {
        log.error({ err }, 'shutdown failed');
        o.exit(1);
      }
    })();
    return stopping;
  };
  // Stays installed while stopping: without a listener SIGHUP would kill the process mid-drain.
  const onHup = () => {
    if (!stopping) reload();
  };
  const onTerm = () => void stop('SIGTERM');
  const onInt = () => void stop('SIGINT');
  process.on('SIGHUP', onHup);
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);
  function dispose(): void {
    watcher?.close();
    clearTimeout(timer);
  }
  return { reload, stop, dispose };
}

function hashOf(file: string): string | undefined {
  try {
    return createHash('sha256').update(readFileSync(file)).digest('hex');
  } catch {
    return undefined;
  }
}
