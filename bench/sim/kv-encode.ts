import type { BlocksStored, EngineBlockHash, KvEvent, KvTier } from '../../indexer/events/types.js';

/** A stored event as the simulator emits it: vLLM also sends the adapter's int id (deprecated, kept for old readers). */
export type SimStoredEvent = BlocksStored & { readonly loraId?: number | null };

/**
 * A msgpack writer that makes the same byte choices as Python's msgspec
 * (the encoder vLLM's publisher uses), so the simulator's payloads equal a
 * real engine's byte for byte: ints in their smallest form (positive ints as
 * fixint/uint8/16/32/64, never the signed forms), floats always float64,
 * str8 for 32..255-byte strings. msgpackr's Packr picks differently in places
 * (float32 for some numbers, records extension, int64 for bigints), hence
 * this hand-written writer; test/bench/sim/encode.test.ts pins it to msgspec's bytes.
 */
class MsgpackWriter {
  #buf = Buffer.allocUnsafe(256);
  #pos = 0;

  #ensure(n: number): void {
    if (this.#pos + n <= this.#buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.#buf.length * 2, this.#pos + n));
    this.#buf.copy(next, 0, 0, this.#pos);
    this.#buf = next;
  }

  #byte(b: number): void {
    this.#ensure(1);
    this.#buf[this.#pos++] = b;
  }

  nil(): void {
    this.#byte(0xc0);
  }

  float64(x: number): void {
    this.#ensure(9);
    this.#buf[this.#pos] = 0xcb;
    this.#buf.writeDoubleBE(x, this.#pos + 1);
    this.#pos += 9;
  }

  int(x: number | bigint): void {
    this.#ensure(9);
    const b = this.#buf;
    // Fast path for token ids and small numbers; BigInt for the rest (hashes).
    if (typeof x === 'number' && x >= 0 && x < 0x10000 && Number.isInteger(x)) {
      if (x < 128) b[this.#pos++] = x;
      else if (x < 0x100) {
        b[this.#pos++] = 0xcc;
        b[this.#pos++] = x;
      } else {
        b[this.#pos] = 0xcd;
        b.writeUInt16BE(x, this.#pos + 1);
        this.#pos += 3;
      }
      return;
    }
    const v = BigInt(x);
    if (v >= 0n) {
      if (v < 128n) b[this.#pos++] = Number(v);
      else if (v < 0x100n) {
        b[this.#pos++] = 0xcc;
        b[this.#pos++] = Number(v);
      } else if (v < 0x10000n) {
        b[this.#pos] = 0xcd;
        b.writeUInt16BE(Number(v), this.#pos + 1);
        this.#pos += 3;
      } else if (v < 0x1_0000_0000n) {
        b[this.#pos] = 0xce;
        b.writeUInt32BE(Number(v), this.#pos + 1);
        this.#pos += 5;
      } else if (v < 1n << 64n) {
        b[this.#pos] = 0xcf;
        b.writeBigUInt64BE(v, this.#pos + 1);
        this.#pos += 9;
      } else throw new RangeError(`integer ${v} does not fit in 64 bits`);
    } else {
      if (v >= -32n) b[this.#pos++] = Number(v) & 0xff;
      else if (v >= -0x80n) {
        b[this.#pos] = 0xd0;
        b.writeInt8(Number(v), this.#pos + 1);
        this.#pos += 2;
      } else if (v >= -0x8000n) {
        b[this.#pos] = 0xd1;
        b.writeInt16BE(Number(v), this.#pos + 1);
        this.#pos += 3;
      } else if (v >= -0x8000_0000n) {
        b[this.#pos] = 0xd2;
        b.writeInt32BE(Number(v), this.#pos + 1);
        this.#pos += 5;
      } else if (v >= -(1n << 63n)) {
        b[this.#pos] = 0xd3;
        b.writeBigInt64BE(v, this.#pos + 1);
        this.#pos += 9;
      } else throw new RangeError(`integer ${v} does not fit in 64 bits`);
    }
  }

  str(s: string): void {
    const n = Buffer.byteLength(s, 'utf8');
    this.#ensure(n + 5);
    const b = this.#buf;
    if (n < 32) b[this.#pos++] = 0xa0 | n;
    else if (n < 0x100) {
      b[this.#pos++] = 0xd9;
      b[this.#pos++] = n;
    } else if (n < 0x10000) {
      b[this.#pos] = 0xda;
      b.writeUInt16BE(n, this.#pos + 1);
      this.#pos += 3;
    } else {
      b[this.#pos] = 0xdb;
      b.writeUInt32BE(n, this.#pos + 1);
      this.#pos += 5;
    }
    this.#pos += b.write(s, this.#pos, 'utf8');
  }

  bin(data: Uint8Array): void {
    const n = data.length;
    this.#ensure(n + 5);
    const b = this.#buf;
    if (n < 0x100) {
      b[this.#pos++] = 0xc4;
      b[this.#pos++] = n;
    } else if (n < 0x10000) {
      b[this.#pos] = 0xc5;
      b.writeUInt16BE(n, this.#pos + 1);
      this.#pos += 3;
    } else {
      b[this.#pos] = 0xc6;
      b.writeUInt32BE(n, this.#pos + 1);
      this.#pos += 5;
    }
    b.set(data, this.#pos);
    this.#pos += n;
  }

  arrayHeader(n: number): void {
    this.#header(n, 0x90, 0xdc, 0xdd);
  }

  mapHeader(n: number): void {
    this.#header(n, 0x80, 0xde, 0xdf);
  }

  #header(n: number, fix: number, h16: number, h32: number): void {
    this.#ensure(5);
    const b = this.#buf;
    if (n < 16) b[this.#pos++] = fix | n;
    else if (n < 0x10000) {
      b[this.#pos] = h16;
      b.writeUInt16BE(n, this.#pos + 1);
      this.#pos += 3;
    } else {
      b[this.#pos] = h32;
      b.writeUInt32BE(n, this.#pos + 1);
      this.#pos += 5;
    }
  }

  strOrNil(s: string | null): void {
    if (s === null) this.nil();
    else this.str(s);
  }

  finish(): Buffer {
    return Buffer.from(this.#buf.subarray(0, this.#pos));
  }
}

/** vLLM's `medium` strings (`MEDIUM_GPU`, `MEDIUM_CPU`). */
function medium(tier: KvTier): string {
  return tier === 'gpu' ? 'GPU' : 'CPU';
}

/** vLLM `ExternalBlockHash = bytes | int`: bigint -> int, hex string -> bytes. */
function writeHash(w: MsgpackWriter, h: EngineBlockHash): void {
  if (typeof h === 'bigint') w.int(h);
  else w.bin(Buffer.from(h, 'hex'));
}

function writeHashes(w: MsgpackWriter, hashes: readonly EngineBlockHash[]): void {
  w.arrayHeader(hashes.length);
  for (const h of hashes) writeHash(w, h);
}

function writeTokens(w: MsgpackWriter, tokens: readonly number[]): void {
  w.arrayHeader(tokens.length);
  for (const t of tokens) w.int(t);
}

function writeLoraId(w: MsgpackWriter, ev: SimStoredEvent): void {
  if (ev.loraId === undefined || ev.loraId === null) w.nil();
  else w.int(ev.loraId);
}

/**
 * One entry per block, as vLLM orders them: `(lora_name?, cache_salt?)`, the
 * salt on the first block of a prompt only; None when a block has no keys.
 */
function writeExtraKeys(w: MsgpackWriter, ev: BlocksStored): void {
  w.arrayHeader(ev.engineHashes.length);
  for (let i = 0; i < ev.engineHashes.length; i++) {
    const keys: string[] = [];
    if (ev.loraName !== null) keys.push(ev.loraName);
    if (i === 0 && ev.parentEngineHash === null && ev.cacheSalt) keys.push(ev.cacheSalt);
    if (keys.length === 0) w.nil();
    else {
      w.arrayHeader(keys.length);
      for (const k of keys) w.str(k);
    }
  }
}

/**
 * vLLM >= 0.24: `KVCacheEvent` is a tagged, map-encoded msgspec struct with
 * omit_defaults. Fields without a default are always written (even nil);
 * defaulted ones only when they differ from the default. Real vLLM fills
 * extra_keys/group_idx/kv_cache_spec_kind for plain text, so we do too;
 * kv_cache_spec_sliding_window stays None and is therefore omitted.
 */
function writeCurrentEvent(w: MsgpackWriter, ev: KvEvent): void {
  switch (ev.kind) {
    case 'stored':
      w.mapHeader(11);
      w.str('type');
      w.str('BlockStored');
      w.str('block_hashes');
      writeHashes(w, ev.engineHashes);
      w.str('parent_block_hash');
      if (ev.parentEngineHash === null) w.nil();
      else writeHash(w, ev.parentEngineHash);
      w.str('token_ids');
      writeTokens(w, ev.tokenIds);
      w.str('block_size');
      w.int(ev.blockSize);
      w.str('lora_id');
      writeLoraId(w, ev);
      w.str('medium');
      w.str(medium(ev.tier));
      w.str('lora_name');
      w.strOrNil(ev.loraName);
      w.str('extra_keys');
      writeExtraKeys(w, ev);
      w.str('group_idx');
      w.int(0);
      w.str('kv_cache_spec_kind');
      w.str('full_attention');
      return;
    case 'removed':
      w.mapHeader(4);
      w.str('type');
      w.str('BlockRemoved');
      w.str('block_hashes');
      writeHashes(w, ev.engineHashes);
      w.str('medium');
      w.str(medium(ev.tier));
      w.str('group_idx');
      w.int(0);
      return;
    case 'cleared':
      w.mapHeader(1);
      w.str('type');
      w.str('AllBlocksCleared');
      return;
  }
}

/** vLLM <= 0.23: `array_like=True` events, tag first, every field written (trailing nils too). */
function writeLegacyEvent(w: MsgpackWriter, ev: KvEvent): void {
  switch (ev.kind) {
    case 'stored':
      w.arrayHeader(12);
      w.str('BlockStored');
      writeHashes(w, ev.engineHashes);
      if (ev.parentEngineHash === null) w.nil();
      else writeHash(w, ev.parentEngineHash);
      writeTokens(w, ev.tokenIds);
      w.int(ev.blockSize);
      writeLoraId(w, ev); // lora_id (deprecated)
      w.str(medium(ev.tier));
      w.strOrNil(ev.loraName);
      writeExtraKeys(w, ev);
      w.int(0); // group_idx
      w.str('full_attention');
      w.nil(); // kv_cache_spec_sliding_window
      return;
    case 'removed':
      w.arrayHeader(4);
      w.str('BlockRemoved');
      writeHashes(w, ev.engineHashes);
      w.str(medium(ev.tier));
      w.int(0);
      return;
    case 'cleared':
      w.arrayHeader(1);
      w.str('AllBlocksCleared');
      return;
  }
}

/**
 * One `KVEventBatch` as vLLM's `msgspec.msgpack.Encoder().encode(batch)` writes
 * it: the batch is array_like in every release, `[ts, events, data_parallel_rank]`.
 * `ts` is seconds since the epoch (float).
 */
export function encodeVllmBatch(
  batch: { ts: number; events: readonly KvEvent[]; dataParallelRank: number | null },
  format: 'current' | 'legacy',
): Buffer {
  const w = new MsgpackWriter();
  w.arrayHeader(3);
  w.float64(batch.ts);
  w.arrayHeader(batch.events.length);
  for (const ev of batch.events) {
    if (format === 'current') writeCurrentEvent(w, ev);
    else writeLegacyEvent(w, ev);
  }
  if (batch.dataParallelRank === null) w.nil();
  else w.int(batch.dataParallelRank);
  return w.finish();
}
