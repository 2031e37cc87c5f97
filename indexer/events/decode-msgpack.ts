import { Unpackr } from 'msgpackr';
import type { EngineBlockHash, KvEvent, KvTier } from './types.js';

/** A payload whose shape is not a KV event batch; the source counts it and moves on. */
export class KvDecodeError extends Error {
  override readonly name = 'KvDecodeError';
}

/**
 * Why an event was not applied. malformed: not a valid event of its type;
 * unknown-type: a type we do not index; other-medium: DISK/EXTERNAL storage;
 * foreign: another node's blocks or another KV cache group; inconsistent:
 * its token count does not match its blocks.
 */
export type SkipReason = 'malformed' | 'unknown-type' | 'other-medium' | 'foreign' | 'inconsistent';
export type SkipCounts = Partial<Record<SkipReason, number>>;

export function addSkips(into: SkipCounts, from: SkipCounts): void {
  for (const [k, v] of Object.entries(from) as [SkipReason, number][]) into[k] = (into[k] ?? 0) + v;
}

export interface DecodedKvPayload {
  /** Engine timestamp, seconds since the epoch. */
  ts: number;
  dataParallelRank: number | null;
  events: KvEvent[];
  /** Events dropped (each alone; the rest of the batch still applies). */
  skipped: number;
  skippedByReason: SkipCounts;
}

// 64-bit ints always come back as bigint (hashes exceed 2^53); smaller forms as number.
// useRecords: false so msgpackr never invents structure from its own extension.
const unpackr = new Unpackr({ int64AsType: 'bigint', mapsAsObjects: true, useRecords: false });

type Fields = Record<string, unknown>;

function isMap(v: unknown): v is Fields {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function isInt(v: unknown): v is number | bigint {
  return typeof v === 'bigint' || (typeof v === 'number' && Number.isInteger(v));
}

function fail(message: string): never {
  throw new KvDecodeError(message);
}

/** ExternalBlockHash = bytes | int: ints (uint64 vLLM, signed int64 SGLang) -> bigint, bytes -> lowercase hex. */
function toHash(v: unknown, what: string): EngineBlockHash {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number' && Number.isSafeInteger(v)) return BigInt(v);
  if (v instanceof Uint8Array && v.length > 0) return Buffer.from(v.buffer, v.byteOffset, v.length).toString('hex');
  return fail(`${what} must be an integer or bytes`);
}

function toHashList(v: unknown, what: string): EngineBlockHash[] {
  if (!Array.isArray(v)) fail(`${what} must be an array`);
  return v.map((h) => toHash(h, what));
}

function toTokenIds(v: unknown): number[] {
  if (!Array.isArray(v)) fail('token_ids must be an array');
  const out = new Array<number>(v.length);
  for (let i = 0; i < v.length; i++) {
    const t: unknown = v[i];
    if (typeof t === 'number' && Number.isInteger(t) && t >= 0) out[i] = t;
    else if (typeof t === 'bigint' && t >= 0n && t <= BigInt(Number.MAX_SAFE_INTEGER)) out[i] = Number(t);
    else fail('token_ids must hold non-negative integers');
  }
  return out;
}

function toSmallInt(v: unknown, what: string): number {
  if (!isInt(v)) fail(`${what} must be an integer`);
  const n = Number(v);
  if (!Number.isSafeInteger(n)) fail(`${what} is out of range`);
  return n;
}

/** GPU -> gpu; CPU / CPU_PINNED (SGLang) -> cpu; DISK, EXTERNAL, STORAGE: not a tier we route on. */
function toTier(medium: unknown): KvTier | null {
  if (medium === undefined || medium === null) return 'gpu'; // pre-`medium` releases only had GPU blocks
  if (typeof medium !== 'string') fail('medium must be a string');
  const m = medium.toUpperCase();
  if (m === 'GPU') return 'gpu';
  if (m === 'CPU' || m === 'CPU_PINNED') return 'cpu';
  return null;
}

/**
 * Events the index must not see: blocks held by another node (`locality`),
 * and KV cache groups other than the first (hybrid models publish one event per
 * group with the same block hashes, so a sliding-window eviction would
 * otherwise remove full-attention blocks from the index).
 */
function isForeign(f: Fields): boolean {
  if (f.locality !== undefined && f.locality !== null && f.locality !== 'LOCAL') return true;
  if (f.group_idx !== undefined && f.group_idx !== null && !(isInt(f.group_idx) && Number(f.group_idx) === 0))
    return true;
  return false;
}

function loraNameOf(f: Fields): string | null {
  if (typeof f.lora_name === 'string') return f.lora_name;
  // Only the numeric id (older vLLM, SGLang): keep the blocks apart from the base model's.
  if (isInt(f.lora_id)) return `lora_id:${f.lora_id}`;
  return null;
}

/**
 * vLLM puts the request's cache_salt last in the first block's extra keys
 * (after the LoRA name and any multimodal hashes); SGLang sends `cache_salt`
 * itself. A multimodal hash there without a salt is read as a salt too, which
 * only keeps that root block from matching unsalted text, as the engine would.
 */
function cacheSaltOf(f: Fields, parent: EngineBlockHash | null, loraName: string | null): string | null {
  if (parent !== null) return null;
  if (typeof f.cache_salt === 'string' && f.cache_salt !== '') return f.cache_salt;
  const first: unknown = Array.isArray(f.extra_keys) ? f.extra_keys[0] : undefined;
  if (!Array.isArray(first) || first.length === 0) return null;
  const last: unknown = first[first.length - 1];
  if (typeof last !== 'string' || last === '') return null;
  // `(lora_name,)` alone is the adapter's key, not a salt.
  return first.length === 1 && (last === f.lora_name || last === loraName) ? null : last;
}

function buildStored(f: Fields): KvEvent | SkipReason {
  const engineHashes = toHashList(f.block_hashes, 'block_hashes');
  const parentEngineHash =
    f.parent_block_hash === null || f.parent_block_hash === undefined
      ? null
      : toHash(f.parent_block_hash, 'parent_block_hash');
  const tokenIds = toTokenIds(f.token_ids);
  const blockSize = toSmallInt(f.block_size, 'block_size');
  const tier = toTier(f.medium);
  const loraName = loraNameOf(f);
  if (tier === null) return 'other-medium';
  if (isForeign(f)) return 'foreign';
  // vLLM's OffloadingConnector: a tier copy of blocks already announced with their tokens.
  if (blockSize === 0 && tokenIds.length === 0 && parentEngineHash === null && engineHashes.length > 0)
    return { kind: 'moved', engineHashes, tier, copy: true };
  if (blockSize <= 0 || engineHashes.length === 0 || tokenIds.length !== engineHashes.length * blockSize)
    return 'inconsistent';
  const cacheSalt = cacheSaltOf(f, parentEngineHash, loraName);
  const ev: KvEvent = { kind: 'stored', engineHashes, parentEngineHash, tokenIds, blockSize, tier, loraName };
  return cacheSalt === null ? ev : { ...ev, cacheSalt };
}

function buildRemoved(f: Fields): KvEvent | SkipReason {
  const engineHashes = toHashList(f.block_hashes, 'block_hashes');
  const tier = toTier(f.medium);
  if (tier === null) return 'other-medium';
  if (isForeign(f)) return 'foreign';
  return { kind: 'removed', engineHashes, tier };
}

/**
 * Positional events, by release: vLLM <= 0.23 `[tag, hashes, parent, tokens,
 * block_size, lora_id, medium, lora_name, extra_keys, group_idx, spec_kind,
 * sliding_window]` (v0.9 stops after block_size; later releases append);
 * SGLang `[tag, hashes, parent, tokens, block_size, lora_id, medium?]`, and
 * 0.5.18+ may put a metadata map (e.g. cache_salt) where vLLM has lora_name.
 */
function positionalFields(tag: string, a: unknown[]): Fields | null {
  switch (tag) {
    case 'BlockStored': {
      if (a.length < 5) fail(`positional BlockStored has ${a.length} elements, expected at least 5`);
      const f: Fields = {
        block_hashes: a[1],
        parent_block_hash: a[2],
        token_ids: a[3],
        block_size: a[4],
        lora_id: a[5],
        medium: a[6],
      };
      if (isMap(a[7])) {
        f.lora_name = a[7].lora_name;
        f.cache_salt = a[7].cache_salt;
      } else f.lora_name = a[7];
      f.extra_keys = a[8];
      f.group_idx = a[9];
      return f;
    }
    case 'BlockRemoved':
      if (a.length < 2) fail('positional BlockRemoved has no block_hashes');
      return { block_hashes: a[1], medium: a[2], group_idx: a[3] };
    case 'AllBlocksCleared':
      return {};
    default:
      return null;
  }
}

function decodeEvent(raw: unknown): KvEvent | SkipReason {
  let tag: unknown;
  let fields: Fields | null;
  if (isMap(raw)) {
    tag = raw.type;
    if (typeof tag !== 'string') fail('event map has no string "type"');
    fields = raw;
  } else if (Array.isArray(raw)) {
    tag = raw[0];
    if (typeof tag !== 'string') fail('positional event does not start with its type name');
    fields = positionalFields(tag, raw);
    if (fields === null) return 'unknown-type';
  } else {
    return fail('event is neither a map nor an array');
  }
  switch (tag) {
    case 'BlockStored':
      return buildStored(fields);
    case 'BlockRemoved':
      return buildRemoved(fields);
    case 'AllBlocksCleared':
      return { kind: 'cleared' };
    default:
      return 'unknown-type';
  }
}

/**
 * Decodes one msgpack `EventBatch` payload (ZMQ frame 3) from vLLM (both inner
 * shapes), SGLang or TRT-LLM's ZMQ publisher. The outer batch is positional
 * `[ts, events, dp_rank?]` in every release; a map `{ts, events,
 * data_parallel_rank}` is accepted too (seen in one vLLM branch snapshot).
 * Throws KvDecodeError on anything that is not such a batch; a bad event
 * inside a good batch is skipped alone and counted by reason.
 */
export function decodeKvBatchPayload(payload: Buffer | Uint8Array): DecodedKvPayload {
  let outer: unknown;
  try {
    outer = unpackr.unpack(payload);
  } catch (err) {
    throw new KvDecodeError(`payload is not msgpack: ${(err as Error).message}`);
  }
  let tsRaw: unknown;
  let eventsRaw: unknown;
  let rankRaw: unknown;
  if (Array.isArray(outer)) {
    if (outer.length < 2) fail(`batch array has ${outer.length} elements, expected [ts, events, dp_rank]`);
    [tsRaw, eventsRaw, rankRaw] = outer as unknown[];
  } else if (isMap(outer)) {
    tsRaw = outer.ts;
    eventsRaw = outer.events;
    rankRaw = outer.data_parallel_rank ?? outer.attn_dp_rank;
  } else {
    fail('batch is neither an array nor a map');
  }
  if (!(typeof tsRaw === 'number' || typeof tsRaw === 'bigint')) fail('batch ts must be a number');
  const ts = Number(tsRaw);
  if (!Number.isFinite(ts)) fail('batch ts must be finite');
  if (!Array.isArray(eventsRaw)) fail('batch events must be an array');
  const dataParallelRank = rankRaw === undefined || rankRaw === null ? null : toSmallInt(rankRaw, 'data_parallel_rank');
  const events: KvEvent[] = [];
  const skippedByReason: SkipCounts = {};
  let skipped = 0;
  for (const raw of eventsRaw) {
    let ev: KvEvent | SkipReason;
    try {
      ev = decodeEvent(raw);
    } catch (err) {
      // One bad event costs only itself: the others in its batch are fine, and dropping them would leave a silent hole.
      if (!(err instanceof KvDecodeError)) throw err;
      ev = 'malformed';
    }
    if (typeof ev === 'string') {
      skipped++;
      skippedByReason[ev] = (skippedByReason[ev] ?? 0) + 1;
    } else {
      events.push(ev);
    }
  }
  return { ts, dataParallelRank, events, skipped, skippedByReason };
}
