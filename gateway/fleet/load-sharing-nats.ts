import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { Fleet } from './fleet.js';
import { LoadSharing, type LoadSharingConfig, type LoadTransport } from './load-sharing.js';

/**
 * Load messages over NATS core pub/sub. A server that cannot be reached is logged
 * once, and routing carries on with local load only (other replicas' load
 * expires); we retry the first connection ourselves, the client reconnects later ones.
 */
export function natsTransport(config: LoadSharingConfig, log: Logger, name: string): LoadTransport {
  let nc: import('nats').NatsConnection | undefined;
  let handler: ((data: Uint8Array) => void) | undefined;
  let onUp: (() => void) | undefined;
  let closed = false;
  let up = false;
  let wake: (() => void) | undefined;
  const down = (reason: string) => {
    if (!up) return;
    up = false;
    log.warn(
      { servers: config.nats.servers, reason },
      "load sharing: NATS unreachable, routing on this replica's own load until it is back",
    );
  };
  const ready = (async () => {
    const { connect, Events } = await import('nats');
    let warned = false;
    while (!closed) {
      try {
        nc = await connect({ servers: config.nats.servers, name, maxReconnectAttempts: -1, reconnectTimeWait: 1000 });
        break;
      } catch (err) {
        if (!warned)
          log.warn(
            { servers: config.nats.servers, error: (err as Error).message },
            "load sharing: NATS unreachable, routing on this replica's own load; retrying",
          );
        warned = true;
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 1000).unref();
        });
      }
    }
    if (!nc) return;
    if (closed) return void (await nc.close().catch(() => {}));
    up = true;
    log.info({ server: nc.getServer(), subject: config.subject }, 'load sharing: connected to NATS');
    nc.subscribe(config.subject, {
      callback: (err, msg) => {
        if (!err) handler?.(msg.data);
      },
    });
    onUp?.();
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === Events.Disconnect) down(String(s.data));
        else if (s.type === Events.Reconnect && !up) {
          up = true;
          log.info({ server: String(s.data) }, 'load sharing: reconnected to NATS');
          onUp?.();
        }
      }
    })().catch(() => {});
  })().catch((err: unknown) => log.error({ error: (err as Error).message }, 'load sharing: NATS client failed'));
  return {
    publish(data) {
      // While disconnected the client would buffer and replay stale snapshots; better to send none.
      if (up && nc && !nc.isClosed()) nc.publish(config.subject, data);
    },
    subscribe(h, up) {
      handler = h;
      onUp = up;
    },
    async close() {
      closed = true;
      wake?.();
      await ready;
      if (nc && !nc.isClosed()) await nc.drain().catch(() => nc?.close());
    },
  };
}

/** The gateway's load sharing over NATS when `loadSharing` is configured; undefined (and said once) otherwise. */
export function createLoadSharing(
  config: LoadSharingConfig | undefined,
  deps: { fleet: Fleet; log: Logger; now: () => number; registry: Registry },
): LoadSharing | undefined {
  if (!config) {
    deps.log.info('load sharing off (no loadSharing): with several replicas, each routes on its own in-flight load');
    return undefined;
  }
  // Not from an injected `random`: two replicas seeded alike would take each other's snapshots for their own.
  const replicaId = randomUUID().slice(0, 13);
  return new LoadSharing({
    ...deps,
    transport: natsTransport(config, deps.log, `kvgate-${replicaId}`),
    config,
    replicaId,
    // Bench-only decision trace (bench/replicas-bench.ts --trace-decisions).
    tracePath: process.env.KVGATE_LOAD_TRACE && `${process.env.KVGATE_LOAD_TRACE}-${replicaId}.jsonl`,
  });
}
