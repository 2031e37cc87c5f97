/**
 * Cutting prompts at added tokens: the segment boundaries of the tokenizer's cache and of its prefix memo.
 */

/** One entry of tokenizer.json `added_tokens`. */
export interface AddedTokenSpec {
  id: number;
  content: string;
  special?: boolean;
  normalized?: boolean;
  lstrip?: boolean;
  rstrip?: boolean;
  single_word?: boolean;
}

export interface SegmentSplitter {
  readonly tokens: readonly string[];
  /** Text pieces between split tokens (non-empty strings) and the split tokens' ids, in order. */
  split(text: string): (string | number)[];
  /** The text of a split token's id (from `split`). */
  textOf(id: number): string;
}

/**
 * Chooses the added tokens that are exact segment boundaries. The native
 * tokenizer first cuts the raw text at added tokens whose `normalized` is false
 * (leftmost-longest, the same as a longest-first regex alternation), then
 * normalises and pre-tokenises each piece alone; so splitting there changes
 * nothing. Not safe, hence left inside segments for the native encoder:
 * `normalized: true` tokens (matched only after normalisation), `lstrip`/`rstrip`
 * tokens (they eat neighbouring whitespace), `single_word` tokens (matched only
 * at word edges). A safe token whose text overlaps an unsafe one, or that starts
 * or ends with whitespace a stripping token could eat, is dropped too.
 */
export function addedTokenSplitter(added: readonly AddedTokenSpec[]): SegmentSplitter {
  const unsafe = added.filter((t) => t.normalized !== false || t.lstrip || t.rstrip || t.single_word);
  const stripping = unsafe.some((t) => t.lstrip || t.rstrip);
  const ids = new Map<string, number>();
  for (const t of added) {
    if (unsafe.includes(t) || t.content.length === 0) continue;
    if (unsafe.some((u) => overlaps(u.content, t.content))) continue;
    if (stripping && /^\s|\s$/u.test(t.content)) continue;
    ids.set(t.content, t.id);
  }
  const tokens = [...ids.keys()].sort((a, b) => b.length - a.length);
  const texts = new Map([...ids].map(([text, id]) => [id, text]));
  const textOf = (id: number) => texts.get(id) ?? '';
  if (tokens.length === 0) return { tokens, textOf, split: (text) => (text.length > 0 ? [text] : []) };
  const pattern = new RegExp(`(${tokens.map(escapeRegExp).join('|')})`);
  return {
    tokens,
    textOf,
    split(text) {
      const raw = text.split(pattern);
      const out: (string | number)[] = [];
      for (let i = 0; i < raw.length; i++) {
        const piece = raw[i]!;
        if (i % 2 === 1) out.push(ids.get(piece)!);
        else if (piece.length > 0) out.push(piece);
      }
      return out;
    },
  };
}

/** True when one string contains the other or a suffix of one is a prefix of the other. */
function overlaps(a: string, b: string): boolean {
  if (a.includes(b) || b.includes(a)) return true;
  for (let k = 1; k < Math.min(a.length, b.length); k++) {
    if (a.endsWith(b.slice(0, k)) || b.endsWith(a.slice(0, k))) return true;
  }
  return false;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
