import type { EngineBlockHash } from '../events/types.js';
import { U64Table } from './u64-table.js';

const MIN_I64 = -(1n << 63n);
const TWO_64 = 1n << 64n;
const CHECK_MASK = 0x1fffff;
const CHECK_SPAN = CHECK_MASK + 1;

/**
 * One target's map from engine block hash to our index node, plus a 21-bit
 * check word (low bits of our hash) that detects a node index that was freed
 * and reused meanwhile.
 *
 * 64-bit integer hashes (vLLM's default ints, SGLang's signed int64, TRT-LLM)
 * go to a U64Table (no per-entry heap objects; signed values map exactly onto
 * their two's complement). 32-byte hashes (hex strings) and any wider integer
 * go to a plain Map, the node and check packed into one number.
 */
export class EngineHashMap {
  readonly #table = new U64Table(64);
  #other: Map<EngineBlockHash, number> | null = null;
  readonly #b64 = new BigUint64Array(1);
  readonly #w32 = new Uint32Array(this.#b64.buffer);
  /** Check word of the last successful `get`. */
  lastCheck = 0;

  static checkOf(lo: number): number {
    return lo & CHECK_MASK;
  }

  get size(): number {
    return this.#table.size + (this.#other?.size ?? 0);
  }

  /** Node for `h`, or -1; sets `lastCheck`. */
  get(h: EngineBlockHash): number {
    if (this.#split(h)) {
      const slot = this.#table.find(this.#w32[0]!, this.#w32[1]!);
      if (slot < 0) return -1;
      this.lastCheck = this.#table.checkAt(slot);
      return this.#table.valueAt(slot);
    }
    const packed = this.#other?.get(h);
    if (packed === undefined) return -1;
    this.lastCheck = packed % CHECK_SPAN;
    return Math.floor(packed / CHECK_SPAN);
  }

  /** Maps `h` to (node, check) and returns the node it mapped to before, or -1 (`lastCheck` = its check). One probe. */
  put(h: EngineBlockHash, node: number, check: number): number {
    if (this.#split(h)) {
      const lo = this.#w32[0]!;
      const hi = this.#w32[1]!;
      const slot = this.#table.probe(lo, hi);
      let prev = -1;
      if (slot >= 0) {
        prev = this.#table.valueAt(slot);
        this.lastCheck = this.#table.checkAt(slot);
      }
      this.#table.fill(slot < 0 ? ~slot : slot, lo, hi, node, check);
      return prev;
    }
    const other = (this.#other ??= new Map<EngineBlockHash, number>());
    const packed = other.get(h);
    other.set(h, node * CHECK_SPAN + check);
    if (packed === undefined) return -1;
    this.lastCheck = packed % CHECK_SPAN;
    return Math.floor(packed / CHECK_SPAN);
  }

  set(h: EngineBlockHash, node: number, check: number): void {
    if (this.#split(h)) this.#table.set(this.#w32[0]!, this.#w32[1]!, node, check);
    else (this.#other ??= new Map()).set(h, node * CHECK_SPAN + check);
  }

  delete(h: EngineBlockHash): void {
    if (this.#split(h)) this.#table.delete(this.#w32[0]!, this.#w32[1]!);
    else this.#other?.delete(h);
  }

  forEachNode(fn: (node: number, check: number) => void): void {
    this.#table.forEach((node, check) => fn(node, check));
    if (this.#other)
      for (const packed of this.#other.values()) fn(Math.floor(packed / CHECK_SPAN), packed % CHECK_SPAN);
  }

  clear(): void {
    this.#table.clear();
    this.#other = null;
  }

  /** Loads a 64-bit integer hash into w32; false for strings and wider integers. */
  #split(h: EngineBlockHash): boolean {
    if (typeof h !== 'bigint' || h < MIN_I64 || h >= TWO_64) return false;
    this.#b64[0] = h;
    return true;
  }
}
