import { offsetEndpoint } from './defaults.js';
import { KvEventPublisher } from './kv-publisher.js';
import type { SimKvEventsOptions } from './worker.js';

const WILDCARD_PORT = /:\*$/;

function portOf(endpoint: string): number {
  return Number(/:(\d+)$/.exec(endpoint)?.[1] ?? NaN);
}

/** Rank r's bind endpoint: the configured one + r, or rank 0's bound port + r when it was a wildcard. */
function rankEndpoint(configured: string, rank0: string, rank: number): string {
  if (!WILDCARD_PORT.test(configured)) return offsetEndpoint(configured, rank);
  return configured.replace(WILDCARD_PORT, `:${portOf(rank0) + rank}`);
}

/**
 * One publisher per data-parallel rank, as vLLM lays them out: rank r
 * publishes on the publish port + r and replays on the replay port + r, and
 * stamps r into its batches. A wildcard port (`tcp://127.0.0.1:*`, a sim
 * convenience) takes a free port for rank 0 and the next ones for the others,
 * trying again elsewhere when one of them is taken or the two ranges would meet.
 */
export async function openRankPublishers(o: SimKvEventsOptions, size: number): Promise<KvEventPublisher[]> {
  // A rank of a wildcard-port endpoint has a concrete port, but binds like rank 0 did.
  const bind = WILDCARD_PORT.test(o.endpoint);
  const open = (endpoint: string, replayEndpoint: string | undefined, rank: number) =>
    KvEventPublisher.open({ endpoint, replayEndpoint, format: o.format, topic: o.topic, dataParallelRank: rank, bind });
  if (size === 1) return [await open(o.endpoint, o.replayEndpoint, 0)];
  const retry =
    WILDCARD_PORT.test(o.endpoint) || (o.replayEndpoint !== undefined && WILDCARD_PORT.test(o.replayEndpoint));
  for (let attempt = 1; ; attempt++) {
    const opened: KvEventPublisher[] = [];
    try {
      const first = await open(o.endpoint, o.replayEndpoint, 0);
      opened.push(first);
      if (first.replayEndpoint !== undefined) {
        const gap = Math.abs(portOf(first.endpoint) - portOf(first.replayEndpoint));
        if (gap < size)
          throw new RangeError(
            `data-parallel size ${size}: publish port ${portOf(first.endpoint)} and replay port ${portOf(first.replayEndpoint)} ranges overlap`,
          );
      }
      for (let r = 1; r < size; r++) {
        const replay =
          o.replayEndpoint === undefined ? undefined : rankEndpoint(o.replayEndpoint, first.replayEndpoint!, r);
        opened.push(await open(rankEndpoint(o.endpoint, first.endpoint, r), replay, r));
      }
      return opened;
    } catch (err) {
      await Promise.all(opened.map((p) => p.close()));
      if (!retry || attempt >= 20) throw err;
    }
  }
}
