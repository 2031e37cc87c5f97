import { SimHttpError } from './openai.js';
import type { SimRankDeps } from './server.js';

/** Routes that run on an engine core: vLLM's API server sends them to one data-parallel rank. */
export const ENGINE_ROUTES = new Set([
  '/v1/completions',
  '/v1/chat/completions',
  '/v1/responses',
  '/v1/messages',
  '/v1/embeddings',
  '/pooling',
  '/score',
  '/v1/score',
  '/rerank',
  '/v1/rerank',
]);

/**
 * The rank a request runs on, as vLLM's API server picks it: the
 * `X-data-parallel-rank` header when it holds an integer (out of range: vLLM's
 * 400), else its internal load balancer, the rank with the lowest
 * `waiting * 4 + running` (ties to the lower rank). Sim controls without the
 * header address rank 0.
 */
export function pickRank(
  ranks: readonly SimRankDeps[],
  header: string | string[] | undefined,
  engine: boolean,
): number {
  const text = Array.isArray(header) ? header[0] : header;
  const asked = text !== undefined && /^\s*[+-]?\d+\s*$/.test(text) ? Number(text) : undefined;
  if (asked !== undefined) {
    if (asked < 0 || asked >= ranks.length)
      throw new SimHttpError(400, `data_parallel_rank ${asked} is out of range [0, ${ranks.length}).`);
    return asked;
  }
  if (!engine || ranks.length === 1) return 0;
  let best = 0;
  let bestScore = Infinity;
  for (const r of ranks) {
    const s = r.scheduler;
    const score = (s.waiting.length + s.loading.length) * 4 + s.running.length;
    if (score < bestScore) [best, bestScore] = [r.rank, score];
  }
  return best;
}
