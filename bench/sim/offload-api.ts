import type { ServerResponse } from 'node:http';
import type { CpuTier } from './cpu-tier.js';
import type { KvCache } from './kv-cache.js';
import { asObject, randomHex, SimHttpError } from './openai.js';

const bad = (message: string, param: string) => new SimHttpError(400, message, 'BadRequestError', param);

function tokensOf(body: Record<string, unknown>): number[] {
  const t = body.tokens;
  if (!Array.isArray(t) || t.some((x) => typeof x !== 'number' || !Number.isInteger(x) || x < 0))
    throw bad('tokens must be a list of token ids', 'tokens');
  return t as number[];
}

/** Block hashes of a base-model token prefix, as this engine keys them. */
function hashesOf(cache: KvCache, tokens: number[]): bigint[] {
  const seq = { tokens, blockIds: [], blockHashes: [] as bigint[], committedBlocks: 0 };
  cache.hashBlocks(seq, Math.floor(tokens.length / cache.blockSize));
  return seq.blockHashes;
}

/**
 * The LMCache controller's `pin` and `lookup`, as the simulator offers them
 * for its host tier (the engine and its controller in one process, so one
 * URL). `POST /pin {tokens, instance_id?, location?, ttl_s?}` keeps the
 * prefix's host-held blocks out of the LRU for ttl_s (default 60) wall-clock
 * seconds (the caller measured the delay it predicts on its own clock); `POST /lookup {tokens}` says how many leading tokens this instance
 * holds on host memory. Answers `{event_id, num_tokens}` and
 * `{event_id, <instance_id>: ["LocalCPUBackend", num_tokens]}` as LMCache does.
 */
export async function offloadApi(
  path: string,
  body: unknown,
  o: { cache: KvCache; cpu: CpuTier | undefined; instanceId: string },
  res: ServerResponse,
  headers: Record<string, string>,
): Promise<void> {
  if (!o.cpu?.enabled) throw new SimHttpError(400, 'no CPU KV tier on this worker (start it with --cpu-kv-blocks)');
  const b = asObject(body);
  const hashes = hashesOf(o.cache, tokensOf(b));
  const bs = o.cache.blockSize;
  let answer: Record<string, unknown>;
  if (path === '/pin') {
    const ttl = b.ttl_s ?? 60;
    if (typeof ttl !== 'number' || !(ttl > 0)) throw bad('ttl_s must be a number > 0', 'ttl_s');
    answer = { num_tokens: o.cpu.pin(hashes, ttl * 1000) * bs };
  } else {
    answer = { [o.instanceId]: ['LocalCPUBackend', o.cpu.lookup(hashes, 0, hashes.length) * bs] };
  }
  const text = JSON.stringify({ event_id: `${path.slice(1)}-${randomHex(8)}`, ...answer });
  res.writeHead(200, { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
