import type { Fleet } from '../fleet/fleet.js';
import type { Transport } from '../proxy/forward.js';
import { withWorkerAuth } from '../proxy/upstream-auth.js';

interface ModelCard {
  id: string;
  object: 'model';
  [key: string]: unknown;
}

/**
 * `GET /v1/models` for the whole fleet: each healthy worker's own cards (vLLM
 * adds `max_model_len`, `root`...), merged by id, plus configured models no
 * healthy worker listed, so clients see every model the gateway can route.
 */
export async function fleetModels(
  fleet: Fleet,
  transport: Transport,
  timeoutMs = 2000,
): Promise<{ object: 'list'; data: ModelCard[] }> {
  const byId = new Map<string, ModelCard>();
  const answers = await Promise.all(
    fleet.healthy.map(async (w) => {
      try {
        const { pool, basePath } = transport.get(w);
        const res = await pool.request({
          path: `${basePath}/v1/models`,
          method: 'GET',
          headers: withWorkerAuth(w, {}),
          signal: AbortSignal.timeout(timeoutMs),
        });
        if (res.statusCode !== 200) {
          await res.body.dump();
          return [];
        }
        const body = (await res.body.json()) as { data?: ModelCard[] };
        return Array.isArray(body.data) ? body.data : [];
      } catch {
        return [];
      }
    }),
  );
  for (const cards of answers)
    for (const c of cards) if (typeof c?.id === 'string' && !byId.has(c.id)) byId.set(c.id, c);
  for (const id of fleet.models) {
    if (!byId.has(id)) byId.set(id, { id, object: 'model', created: 0, owned_by: 'kvgate' });
  }
  return { object: 'list', data: [...byId.values()] };
}
