import type { ServerResponse } from 'node:http';
import type { Fleet } from '../fleet/fleet.js';
import type { Transport } from '../proxy/forward.js';
import { withWorkerAuth } from '../proxy/upstream-auth.js';
import { badRequest, GatewayError, sendError } from './errors.js';

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

/**
 * `GET /v1/models/{id}` (openai's `models.retrieve`), from the same merged cards.
 * Model ids carry slashes (`Qwen/Qwen3-0.6B`), which the official client sends
 * encoded (`Qwen%2FQwen3-0.6B`); some clients send them raw. Both name the same
 * model. The id only selects a card here and never reaches a worker's path, which
 * is why encoded slashes are fine on this route alone (pass-through refuses them).
 */
export async function retrieveModel(
  res: ServerResponse,
  rawId: string,
  cards: () => Promise<{ data: ModelCard[] }>,
): Promise<void> {
  let id: string;
  try {
    id = decodeURIComponent(rawId);
  } catch {
    return sendError(res, badRequest('model id is not valid percent-encoding', 'model', 'invalid_path'));
  }
  if (id === '' || id.split('/').some((s) => s === '.' || s === '..'))
    return sendError(res, badRequest('path must not contain dot segments or encoded slashes', null, 'invalid_path'));
  const card = (await cards()).data.find((c) => c.id === id);
  if (!card)
    return sendError(
      res,
      new GatewayError(404, `The model \`${id}\` does not exist.`, 'not_found_error', 'model_not_found', 'model'),
    );
  const text = JSON.stringify(card);
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
