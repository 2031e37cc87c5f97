import { LRUCache } from 'lru-cache';

/**
 * Token ids of rendered prompts up to their last turn boundary, so that a turn
 * extending a conversation looks up, splits and joins only what it adds.
 *
 * Without it a warm turn is still linear in the whole prompt: the segment cache
 * saves the native encode, but the text is split at every added token, every
 * segment looked up, and every id copied (at 128k tokens ~20 ms of event-loop
 * time per request, bench/results/route-bench.md).
 *
 * A boundary is the start of a "marker": the added token a chat template opens
 * each message with (`<|im_start|>`, `<|start_header_id|>`), learnt as the most
 * frequent segment-boundary token of a prompt. Prompts are cut at such tokens
 * before the native tokenizer sees them (see `addedTokenSplitter`), so the ids
 * of `text[0:p]` followed by those of `text[p:]` are the ids of `text` whenever
 * a marker starts at `p`. An entry remembers one prompt's text up to the start
 * of its last marker (for a chat request, everything before the generation
 * prompt); a later prompt tries its last few marker positions, longest first,
 * and takes an entry only if its text starts with the entry's text.
 */
export interface PrefixHit {
  /** Characters of the text the ids cover. */
  readonly length: number;
  readonly ids: Uint32Array;
  /** Pass to `remember` when this turn extends it: the longer prefix replaces it. */
  readonly key: string;
}

interface Entry {
  readonly prefix: string;
  readonly ids: Uint32Array;
}

/** Marker positions tried per lookup, from the end: a new turn adds a few messages (tool results: more). */
const TRIES = 8;
/** Characters before the boundary in the key: with the length, tells prompts of equal length apart. */
const KEY_TAIL = 64;
const ENTRY_OVERHEAD = 128;
/** Below this, a prompt is cheap enough whole. */
const MIN_PREFIX = 2048;

export class PrefixMemo {
  readonly #entries: LRUCache<string, Entry>;
  /** Marker token texts seen so far (one per chat template in practice). */
  readonly #markers = new Set<string>();
  #hits = 0;
  #misses = 0;

  constructor(maxBytes: number) {
    this.#entries = new LRUCache<string, Entry>({
      maxSize: maxBytes,
      sizeCalculation: (e) => e.ids.byteLength + e.prefix.length * 2 + ENTRY_OVERHEAD,
    });
  }

  get stats(): { hits: number; misses: number; entries: number; bytes: number } {
    return {
      hits: this.#hits,
      misses: this.#misses,
      entries: this.#entries.size,
      bytes: this.#entries.calculatedSize,
    };
  }

  /** The longest remembered prefix of `text` that ends where a marker starts. */
  find(text: string): PrefixHit | undefined {
    if (text.length < MIN_PREFIX) return undefined;
    let best: Entry | undefined;
    let bestKey = '';
    for (const marker of this.#markers) {
      let at = text.length;
      for (let k = 0; k < TRIES; k++) {
        at = text.lastIndexOf(marker, at - 1);
        if (at < MIN_PREFIX || (best && at <= best.prefix.length)) break;
        const key = keyOf(text, at);
        const entry = this.#entries.get(key);
        if (entry && text.startsWith(entry.prefix)) {
          best = entry;
          bestKey = key;
          break;
        }
      }
    }
    if (!best) {
      this.#misses++;
      return undefined;
    }
    this.#hits++;
    return { length: best.prefix.length, ids: best.ids, key: bestKey };
  }

  /**
   * Remembers `text` up to `boundary` (where `marker` starts), whose ids are
   * `count` ids of `ids` from `from`. `replaces`: the key of the shorter prefix
   * this text was found to extend, dropped so a conversation holds one entry.
   */
  remember(
    text: string,
    boundary: number,
    marker: string,
    ids: ArrayLike<number>,
    from: number,
    count: number,
    replaces?: string,
  ): void {
    if (boundary < MIN_PREFIX) return;
    this.#markers.add(marker);
    const key = keyOf(text, boundary);
    if (this.#entries.has(key)) return;
    if (replaces !== undefined) this.#entries.delete(replaces);
    const prefixIds = new Uint32Array(count);
    for (let i = 0; i < count; i++) prefixIds[i] = ids[from + i]!;
    this.#entries.set(key, { prefix: text.slice(0, boundary), ids: prefixIds });
  }

  clear(): void {
    this.#entries.clear();
  }
}

function keyOf(text: string, boundary: number): string {
  return `${boundary}:${text.slice(Math.max(0, boundary - KEY_TAIL), boundary)}`;
}
