import { KvDecodeError, type SkipCounts, type SkipReason } from './decode-msgpack.js';
import type { EngineBlockHash, KvEvent, KvEventBatch, KvTier } from './types.js';

/**
 * JSON.parse turns 18446744073709551615 into 18446744073709552000, and Node 20's
 * reviver cannot see the source text. This small parser keeps integers outside
 * the safe range as bigint and leaves the rest (strings, escapes, floats) to
 * JSON.parse on the token's own slice.
 */
export function parseJsonLossless(text: string): unknown {
  let i = 0;
  const ws = () => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\n' || text[i] === '\r' || text[i] === '\t')) i++;
  };
  const bad = (what: string): never => {
    throw new KvDecodeError(`invalid JSON at offset ${i}: ${what}`);
  };
  const NUMBER = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
  const value = (depth: number): unknown => {
    if (depth > 64) bad('nested too deeply');
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const obj: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
      ws();
      if (text[i] === '}') {
        i++;
        return obj;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') bad('expected a key');
        const key = string();
        ws();
        if (text[i++] !== ':') bad('expected ":"');
        obj[key] = value(depth + 1);
        ws();
        const sep = text[i++];
        if (sep === '}') return obj;
        if (sep !== ',') bad('expected "," or "}"');
      }
    }
    if (c === '[') {
      i++;
      const arr: unknown[] = [];
      ws();
      if (text[i] === ']') {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value(depth + 1));
        ws();
        const sep = text[i++];
        if (sep === ']') return arr;
        if (sep !== ',') bad('expected "," or "]"');
      }
    }
    if (c === '"') return string();
    for (const [word, v] of [
      ['true', true],
      ['false', false],
      ['null', null],
    ] as const) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return v;
      }
    }
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (!m) return bad('unexpected character');
    i += m[0].length;
    if (m[1] === undefined && m[2] === undefined) {
      const n = Number(m[0]);
      return Number.isSafeInteger(n) ? n : BigInt(m[0]);
    }
    return Number(m[0]);
  };
  const string = (): string => {
    const start = i++;
    while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    if (i >= text.length) bad('unterminated string');
    i++;
    try {
      return JSON.parse(text.slice(start, i)) as string;
    } catch {
      return bad('bad string');
    }
  };
  const result = value(0);
  ws();
  if (i !== text.length) bad('trailing data');
  return result;
}

export interface TrtllmDecodeOptions {
  /** Tokens per KV block; when unset, the first block of each `stored` event decides. */
  blockSize?: number | undefined;
  /** Largest attention window seen so far; events for smaller (sliding) windows are skipped. */
  maxWindowSize?: number | undefined;
  /** ms clock for the batch ts (the JSON carries none), default Date.now. */
  now?: (() => number) | undefined;
}

export interface TrtllmDecoded {
  /** One batch per event, in response (= event id) order; `created`/`updated`/skipped events give empty batches so ids stay contiguous. */
  batches: KvEventBatch[];
  skipped: number;
  skippedByReason: SkipCounts;
  /** Largest `window_size` seen, including this response: pass it back in next time. */
  maxWindowSize: number | undefined;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function toHash(v: unknown): EngineBlockHash {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number' && Number.isSafeInteger(v)) return BigInt(v);
  throw new KvDecodeError('block hash must be an integer');
}

/** cache_level 0 is the primary pool (GPU), anything higher is offloaded (host memory). */
function tierOf(block: Obj): KvTier {
  return typeof block.cache_level === 'number' && block.cache_level > 0 ? 'cpu' : 'gpu';
}

function tokensOf(block: Obj): number[] {
  if (!Array.isArray(block.tokens)) throw new KvDecodeError('stored block has no tokens array');
  return block.tokens.map((t: unknown) => {
    const id = isObj(t) ? t.token_id : t;
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0)
      throw new KvDecodeError('token_id must be a non-negative integer');
    return id;
  });
}

/**
 * `stored`: blocks in chain order; a run of full blocks becomes one BlocksStored
 * per tier, and the chain stops at the first partial block (TRT-LLM reports the
 * request's unfinished last block too, which the index must not learn).
 */
function storedEvents(data: Obj, blockSize: number | undefined): { events: KvEvent[]; skipped: number } {
  if (!Array.isArray(data.blocks)) throw new KvDecodeError('stored event has no blocks array');
  const events: KvEvent[] = [];
  let parent: EngineBlockHash | null =
    data.parent_hash === null || data.parent_hash === undefined ? null : toHash(data.parent_hash);
  let size = blockSize;
  let current: {
    engineHashes: EngineBlockHash[];
    tokenIds: number[];
    tier: KvTier;
    parentEngineHash: EngineBlockHash | null;
  } | null = null;
  let partial = false;
  for (const block of data.blocks) {
    if (!isObj(block)) throw new KvDecodeError('stored block must be an object');
    const hash = toHash(block.block_hash);
    const tokens = tokensOf(block);
    size ??= tokens.length;
    if (size <= 0 || tokens.length !== size) {
      partial = true;
      break;
    }
    const tier = tierOf(block);
    if (current === null || current.tier !== tier) {
      current = { engineHashes: [], tokenIds: [], tier, parentEngineHash: parent };
      events.push({ kind: 'stored', ...current, blockSize: size, loraName: null });
    }
    current.engineHashes.push(hash);
    for (const t of tokens) current.tokenIds.push(t);
    parent = hash;
  }
  return { events, skipped: partial && events.length === 0 ? 1 : 0 };
}

/**
 * Decodes the JSON array returned by trtllm-serve `POST /kv_cache_events`.
 * `event_id` becomes the batch seq, `attention_dp_rank` the rank. Only a
 * body that is not a JSON array throws; a bad event is skipped alone.
 */
export function decodeTrtllmEvents(jsonText: string, options: TrtllmDecodeOptions = {}): TrtllmDecoded {
  const parsed = parseJsonLossless(jsonText);
  if (!Array.isArray(parsed)) throw new KvDecodeError('kv_cache_events response is not a JSON array');
  let maxWindowSize = options.maxWindowSize;
  for (const ev of parsed) {
    if (
      isObj(ev) &&
      typeof ev.window_size === 'number' &&
      (maxWindowSize === undefined || ev.window_size > maxWindowSize)
    )
      maxWindowSize = ev.window_size;
  }
  const ts = (options.now ?? Date.now)() / 1000;
  const batches: KvEventBatch[] = [];
  const skippedByReason: SkipCounts = {};
  const skip = (reason: SkipReason) => (skippedByReason[reason] = (skippedByReason[reason] ?? 0) + 1);
  for (const ev of parsed) {
    const idRaw = isObj(ev) ? ev.event_id : undefined;
    if (!(typeof idRaw === 'number' && Number.isInteger(idRaw) && idRaw >= 0) && typeof idRaw !== 'bigint') {
      // Without a usable id the event cannot even hold its place in the sequence.
      skip('malformed');
      continue;
    }
    const rank = isObj(ev) && typeof ev.attention_dp_rank === 'number' ? ev.attention_dp_rank : null;
    const events: KvEvent[] = [];
    try {
      const data = (ev as Obj).data;
      if (!isObj(data) || typeof data.type !== 'string')
        throw new KvDecodeError('event must be {event_id, data: {type, ...}}');
      const otherWindow =
        isObj(ev) &&
        typeof ev.window_size === 'number' &&
        maxWindowSize !== undefined &&
        ev.window_size < maxWindowSize;
      if (data.type === 'stored' || data.type === 'removed') {
        if (otherWindow) {
          skip('foreign');
        } else if (data.type === 'stored') {
          const r = storedEvents(data, options.blockSize);
          events.push(...r.events);
          if (r.skipped > 0) skip('inconsistent');
        } else {
          if (!Array.isArray(data.block_hashes)) throw new KvDecodeError('removed event has no block_hashes array');
          // The JSON does not say which pool a removal is from: the block leaves whichever tiers hold it.
          events.push({ kind: 'removed', engineHashes: data.block_hashes.map(toHash), tier: 'gpu', allTiers: true });
        }
      } else if (data.type === 'updated') {
        // Priority changes do not move data; a cache_level change moves the block between GPU and host memory.
        const level = data.cache_level;
        if (isObj(level) && typeof level.new_value === 'number') {
          const tier: KvTier = level.new_value > 0 ? 'cpu' : 'gpu';
          events.push({ kind: 'moved', engineHashes: [toHash(data.block_hash)], tier });
        }
      } else if (data.type !== 'created') {
        skip('unknown-type');
      }
    } catch (err) {
      if (!(err instanceof KvDecodeError)) throw err;
      events.length = 0;
      skip('malformed');
    }
    // Skipped events still take their id (an empty batch), so the ids stay contiguous.
    batches.push({ seq: BigInt(idRaw), ts, dataParallelRank: rank, events });
  }
  let skipped = 0;
  for (const n of Object.values(skippedByReason)) skipped += n;
  return { batches, skipped, skippedByReason, maxWindowSize };
}
