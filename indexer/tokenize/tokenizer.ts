import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LRUCache } from 'lru-cache';
import { Tokenizer } from 'tokenizers';
import { ChatTemplate, type ChatRenderOptions } from './chat-template.js';
import { tokenLengths, type TokenLengths } from './context-bound.js';
import { PrefixMemo, type PrefixHit } from './prefix-memo.js';
import { addedTokenSplitter, type AddedTokenSpec, type SegmentSplitter } from './segment-splitter.js';

export { addedTokenSplitter, type AddedTokenSpec } from './segment-splitter.js';

export interface TokenizerOptions {
  /** Upper bound on the segment cache, in bytes (token ids plus keys), and again on the prefix memo. Default 64 MiB. */
  cacheBytes?: number;
}

export interface TokenizerStats {
  segmentHits: number;
  segmentMisses: number;
  /** Batches sent to the native encoder (one per request with misses). */
  encodeBatches: number;
  cacheBytes: number;
  cacheEntries: number;
  /** Prompts that started with a remembered earlier prompt (prefix-memo.ts), and those that did not. */
  prefixHits: number;
  prefixMisses: number;
}
export interface ChatTokenizeOptions extends ChatRenderOptions {
  /** vLLM's chat `add_special_tokens` (default false: the template already wrote them). */
  addSpecialTokens?: boolean | undefined;
}

const DEFAULT_CACHE_BYTES = 64 * 1024 * 1024;
// Rough per-entry overhead of an LRU node (Map slot, list links, typed-array header).
const ENTRY_OVERHEAD = 96;
const SPECIAL_TOKEN_KEYS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'];

/**
 * Turns requests into the token ids vLLM computes for them.
 *
 * Encoding runs in the native `tokenizers` binding, whose `encode`/`encodeBatch`
 * run on libuv's thread pool (measured: the event loop keeps ticking while a
 * 100k-character text encodes). Prompts are split at added-token strings such as
 * `<|im_start|>`: the native tokenizer cuts the text at those same strings before
 * normalising and pre-tokenising, so each piece encodes independently and can be
 * cached; a new chat turn then costs only the text it adds. Cache keys are the
 * segment strings themselves: exact, and measured faster than hashing them (V8
 * hashes long strings in O(1) and compares on a hit).
 */
export class PromptTokenizer {
  readonly #tokenizer: Tokenizer;
  readonly #templates: { plain: ChatTemplate | undefined; tools: ChatTemplate | undefined };
  readonly #splitter: SegmentSplitter;
  readonly #segments: LRUCache<string, Uint32Array>;
  readonly #prefixes: PrefixMemo;
  readonly #inflight = new Map<string, Promise<Uint32Array>>();
  readonly #affixes: { prefix: number[]; suffix: number[] } | undefined;
  #lengths: TokenLengths = { maxCharsPerToken: 1, modelMaxLength: undefined };
  #vocabSize: number | undefined;
  #hits = 0;
  #misses = 0;
  #batches = 0;

  private constructor(
    tokenizer: Tokenizer,
    templates: { plain: ChatTemplate | undefined; tools: ChatTemplate | undefined },
    splitter: SegmentSplitter,
    affixes: { prefix: number[]; suffix: number[] } | undefined,
    options: TokenizerOptions,
  ) {
    this.#tokenizer = tokenizer;
    this.#templates = templates;
    this.#splitter = splitter;
    this.#affixes = affixes;
    this.#segments = new LRUCache<string, Uint32Array>({
      maxSize: options.cacheBytes ?? DEFAULT_CACHE_BYTES,
      sizeCalculation: (ids, key) => ids.byteLength + key.length * 2 + ENTRY_OVERHEAD,
    });
    this.#prefixes = new PrefixMemo(options.cacheBytes ?? DEFAULT_CACHE_BYTES);
  }

  /** Loads `tokenizer.json` and `tokenizer_config.json` (chat template, special tokens) from a model directory. */
  static async load(dir: string, options: TokenizerOptions = {}): Promise<PromptTokenizer> {
    const tokenizerJson = await readFile(join(dir, 'tokenizer.json'), 'utf8').catch((err: NodeJS.ErrnoException) => {
      throw new Error(
        err.code === 'ENOENT'
          ? `no tokenizer.json in ${dir}`
          : `cannot read ${join(dir, 'tokenizer.json')}: ${err.code ?? err.message}`,
      );
    });
    const tokenizer = Tokenizer.fromString(tokenizerJson);
    // transformers turns both off per call unless asked; vLLM never asks for padding here.
    tokenizer.disableTruncation();
    tokenizer.disablePadding();
    const parsed = JSON.parse(tokenizerJson) as { added_tokens?: AddedTokenSpec[] };
    const splitter = addedTokenSplitter(parsed.added_tokens ?? []);
    const templates = await loadTemplates(dir);
    const affixes = await specialAffixes(tokenizer);
    const loaded = new PromptTokenizer(tokenizer, templates, splitter, affixes, options);
    loaded.#lengths = await tokenLengths(dir, parsed);
    return loaded;
  }

  /** What bounds a prompt's tokenization (context-bound.ts). */
  get lengths(): TokenLengths {
    return this.#lengths;
  }

  /** Token count of a text alone, uncached: for probing a prefix of a huge prompt. */
  async countTokens(text: string): Promise<number> {
    return (await this.#tokenizer.encode(text, null, { addSpecialTokens: false })).getIds().length;
  }

  get hasChatTemplate(): boolean {
    return this.#templates.plain !== undefined;
  }

  /** Added-token strings used as segment boundaries (those proved safe; see token-segments.ts). */
  get splitTokens(): readonly string[] {
    return this.#splitter.tokens;
  }

  /** Renders a chat request to the exact prompt text vLLM tokenizes. */
  renderChat(messages: readonly unknown[], options: ChatRenderOptions = {}): string {
    const hasTools = Array.isArray(options.tools) && options.tools.length > 0;
    const template = (hasTools ? this.#templates.tools : undefined) ?? this.#templates.plain;
    if (!template)
      throw new Error(
        'this tokenizer has no chat template (tokenizer_config.json chat_template or chat_template.jinja)',
      );
    return template.render(messages, options);
  }

  /** Token ids for a chat request: rendered with the template, encoded without special tokens unless asked (as vLLM does). */
  async tokenizeChat(messages: readonly unknown[], options: ChatTokenizeOptions = {}): Promise<number[]> {
    return this.encodeCached(this.renderChat(messages, options), options.addSpecialTokens ?? false);
  }

  /** Token ids for a completion prompt string: with the tokenizer's special tokens (BOS and the like) unless told otherwise. */
  async tokenizeCompletion(prompt: string, addSpecialTokens = true): Promise<number[]> {
    return this.encodeCached(prompt, addSpecialTokens);
  }

  /** Plain whole-text encode, no cache: the reference the cached path must equal. */
  async encode(text: string, addSpecialTokens: boolean): Promise<number[]> {
    const encoding = await this.#tokenizer.encode(text, null, { addSpecialTokens });
    return encoding.getIds();
  }

  /** Ids in 0..vocabSize-1 exist (the model's vocabulary plus its added tokens). */
  get vocabSize(): number {
    // Read once: each native call costs a crossing, and prompts of token ids check every id against it.
    return (this.#vocabSize ??= this.#tokenizer.getVocabSize(true));
  }

  /** Text of token ids, special tokens kept: vLLM's `/detokenize` (`tokenizer.decode(ids)`). */
  async decode(ids: readonly number[]): Promise<string> {
    return this.#tokenizer.decode([...ids], false);
  }

  /** Vocabulary strings of token ids: vLLM's `token_strs` (`convert_ids_to_tokens`). */
  tokenStrs(ids: readonly number[]): string[] {
    return ids.map((id) => this.#tokenizer.idToToken(id) ?? '');
  }

  /**
   * Encodes text segment by segment, reusing cached segments; equal to
   * `encode(text, addSpecialTokens)` (the test corpus checks it). Special tokens
   * the post-processor adds around a single sequence are learnt at load time;
   * if that failed, special-token encodes bypass the cache.
   */
  async encodeCached(text: string, addSpecialTokens = false): Promise<number[]> {
    if (addSpecialTokens && !this.#affixes) return this.encode(text, true);
    const known = this.#prefixes.find(text);
    const pieces = this.#splitter.split(known ? text.slice(known.length) : text);
    const parts = new Array<Uint32Array | number | undefined>(pieces.length);
    const misses = new Map<string, number[]>();
    for (let i = 0; i < pieces.length; i++) {
      const piece = pieces[i]!;
      if (typeof piece === 'number') {
        parts[i] = piece;
        continue;
      }
      const cached = this.#segments.get(piece);
      if (cached) {
        this.#hits += 1;
        parts[i] = cached;
      } else {
        const slots = misses.get(piece);
        if (slots) slots.push(i);
        else misses.set(piece, [i]);
      }
    }
    if (misses.size > 0) await this.#fill(misses, parts);
    const ids = this.#join(known?.ids, parts, addSpecialTokens);
    this.#rememberPrefix(text, known, pieces, parts, ids, addSpecialTokens);
    return ids;
  }

  /** Remembers `text` up to its last marker (see prefix-memo.ts): the next turn of this conversation starts there. */
  #rememberPrefix(
    text: string,
    known: PrefixHit | undefined,
    pieces: readonly (string | number)[],
    parts: readonly (Uint32Array | number | undefined)[],
    ids: readonly number[],
    addSpecialTokens: boolean,
  ): void {
    // The marker: the most frequent split token (each message opens with it), first seen on a tie.
    const counts = new Map<number, number>();
    let marker = -1;
    for (const p of pieces) {
      if (typeof p !== 'number') continue;
      const n = (counts.get(p) ?? 0) + 1;
      counts.set(p, n);
      if (marker < 0 || n > counts.get(marker)!) marker = p;
    }
    if (marker < 0) return;
    const last = pieces.lastIndexOf(marker);
    let chars = known?.length ?? 0;
    let count = known?.ids.length ?? 0;
    for (let i = 0; i < last; i++) {
      const p = pieces[i]!;
      chars += typeof p === 'number' ? this.#splitter.textOf(p).length : p.length;
      count += typeof p === 'number' ? 1 : (parts[i] as Uint32Array).length;
    }
    const from = addSpecialTokens ? this.#affixes!.prefix.length : 0;
    this.#prefixes.remember(text, chars, this.#splitter.textOf(marker), ids, from, count, known?.key);
  }

  /** Empties the segment cache and the templates' render caches (counters stay). */
  clearCache(): void {
    this.#segments.clear();
    this.#prefixes.clear();
    this.#templates.plain?.clearCache();
    this.#templates.tools?.clearCache();
  }

  stats(): TokenizerStats {
    return {
      segmentHits: this.#hits,
      segmentMisses: this.#misses,
      encodeBatches: this.#batches,
      cacheBytes: this.#segments.calculatedSize,
      cacheEntries: this.#segments.size,
      prefixHits: this.#prefixes.stats.hits,
      prefixMisses: this.#prefixes.stats.misses,
    };
  }

  /** Encodes the missing segments in one native batch, sharing encodes already in flight for other requests. */
  async #fill(misses: Map<string, number[]>, parts: (Uint32Array | number | undefined)[]): Promise<void> {
    const waits: Promise<void>[] = [];
    const fresh: string[] = [];
    for (const [piece, slots] of misses) {
      this.#misses += slots.length;
      const pending = this.#inflight.get(piece);
      if (pending)
        waits.push(
          pending.then((ids) => {
            for (const s of slots) parts[s] = ids;
          }),
        );
      else fresh.push(piece);
    }
    if (fresh.length > 0) {
      this.#batches += 1;
      const batch = this.#tokenizer.encodeBatch(fresh, { addSpecialTokens: false });
      fresh.forEach((piece, k) => {
        const one = batch.then((encodings) => Uint32Array.from(encodings[k]!.getIds()));
        this.#inflight.set(piece, one);
        const slots = misses.get(piece)!;
        waits.push(
          one
            .then((ids) => {
              for (const s of slots) parts[s] = ids;
              // A flat copy as key: `split` returns slices that would pin the whole prompt in memory.
              this.#segments.set(flatCopy(piece), ids);
            })
            .finally(() => this.#inflight.delete(piece)),
        );
      });
    }
    await Promise.all(waits);
  }

  #join(
    known: Uint32Array | undefined,
    parts: readonly (Uint32Array | number | undefined)[],
    addSpecialTokens: boolean,
  ): number[] {
    const prefix = addSpecialTokens ? this.#affixes!.prefix : [];
    const suffix = addSpecialTokens ? this.#affixes!.suffix : [];
    // Sized once: pushing 100k+ ids one by one into a growing array was most of a warm long prompt's cost.
    let total = prefix.length + suffix.length + (known?.length ?? 0);
    for (const part of parts) total += typeof part === 'number' ? 1 : (part?.length ?? 0);
    const out = new Array<number>(total);
    let k = 0;
    for (const id of prefix) out[k++] = id;
    if (known) for (let i = 0; i < known.length; i++) out[k++] = known[i]!;
    for (const part of parts) {
      if (typeof part === 'number') out[k++] = part;
      else if (part) for (let i = 0; i < part.length; i++) out[k++] = part[i]!;
    }
    for (const id of suffix) out[k++] = id;
    return out;
  }
}

/** transformers picks a named template: `tool_use` when tools are given and it exists, else `default`. */
async function loadTemplates(
  dir: string,
): Promise<{ plain: ChatTemplate | undefined; tools: ChatTemplate | undefined }> {
  const configText = await readFile(join(dir, 'tokenizer_config.json'), 'utf8').catch(() => undefined);
  const config = configText ? (JSON.parse(configText) as Record<string, unknown>) : {};
  const specials: Record<string, unknown> = {};
  for (const key of SPECIAL_TOKEN_KEYS) {
    const value = tokenString(config[key]);
    if (value !== undefined) specials[key] = value;
  }
  if (Array.isArray(config.additional_special_tokens)) {
    specials.additional_special_tokens = config.additional_special_tokens
      .map(tokenString)
      .filter((s) => s !== undefined);
  }
  let plain: string | undefined;
  let tools: string | undefined;
  if (typeof config.chat_template === 'string') plain = config.chat_template;
  else if (Array.isArray(config.chat_template)) {
    for (const entry of config.chat_template as { name?: unknown; template?: unknown }[]) {
      if (entry.name === 'default' && typeof entry.template === 'string') plain = entry.template;
      if (entry.name === 'tool_use' && typeof entry.template === 'string') tools = entry.template;
    }
  }
  plain ??= await readFile(join(dir, 'chat_template.jinja'), 'utf8').catch(() => undefined);
  return {
    plain: plain === undefined ? undefined : new ChatTemplate(plain, specials),
    tools: tools === undefined ? undefined : new ChatTemplate(tools, specials),
  };
}

/**
 * Learns what the post-processor adds around one sequence (e.g. BOS) by encoding
 * probes with and without special tokens; undefined when the difference is not
 * a plain prefix/suffix, so the caller falls back to uncached encodes.
 */
async function specialAffixes(tokenizer: Tokenizer): Promise<{ prefix: number[]; suffix: number[] } | undefined> {
  let found: { prefix: number[]; suffix: number[] } | undefined;
  for (const probe of ['a', 'Hello world.\n', '']) {
    const withSpecial = (await tokenizer.encode(probe, null, { addSpecialTokens: true })).getIds();
    const plain = (await tokenizer.encode(probe, null, { addSpecialTokens: false })).getIds();
    const at = indexOfRun(withSpecial, plain);
    if (at < 0) return undefined;
    const affix = { prefix: withSpecial.slice(0, at), suffix: withSpecial.slice(at + plain.length) };
    if (found && (!sameIds(found.prefix, affix.prefix) || !sameIds(found.suffix, affix.suffix))) return undefined;
    found = affix;
  }
  return found;
}

function indexOfRun(haystack: number[], needle: number[]): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

function sameIds(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

function flatCopy(s: string): string {
  return s.length < 16 ? s : Buffer.from(s, 'utf16le').toString('utf16le');
}

function tokenString(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string')
    return (value as { content: string }).content;
  return undefined;
}
