import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LRUCache } from 'lru-cache';
import { Tokenizer } from 'tokenizers';
import { ChatTemplate, type ChatMessage, type ChatRenderOptions } from './chat-template.js';

export interface TokenizerOptions {
  /** Upper bound on the segment cache, in bytes of cached token ids plus keys. */
  cacheBytes?: number;
}

export interface TokenizerStats {
  segmentHits: number;
  segmentMisses: number;
  cacheBytes: number;
  cacheEntries: number;
}

const DEFAULT_CACHE_BYTES = 64 * 1024 * 1024;

/**
 * Turns requests into the token ids the engine will compute for them.
 *
 * Encoding runs in the native `tokenizers` binding, whose `encode` is async and
 * runs off the event loop. Rendered prompts are split at added-token boundaries
 * (for example `<|im_start|>`): the tokenizer never merges across those, so each
 * piece can be encoded and cached on its own, and a new chat turn costs only the
 * text it adds.
 */
export class PromptTokenizer {
  readonly #tokenizer: Tokenizer;
  readonly #chatTemplate: ChatTemplate | undefined;
  readonly #addedTokens: Map<string, number>;
  readonly #splitter: RegExp | undefined;
  readonly #segments: LRUCache<string, Uint32Array>;
  #hits = 0;
  #misses = 0;

  private constructor(tokenizer: Tokenizer, chatTemplate: ChatTemplate | undefined, addedTokens: Map<string, number>, options: TokenizerOptions) {
    this.#tokenizer = tokenizer;
    this.#chatTemplate = chatTemplate;
    this.#addedTokens = addedTokens;
    const alternatives = [...addedTokens.keys()].sort((a, b) => b.length - a.length).map(escapeRegExp);
    this.#splitter = alternatives.length > 0 ? new RegExp(`(${alternatives.join('|')})`) : undefined;
    this.#segments = new LRUCache<string, Uint32Array>({
      maxSize: options.cacheBytes ?? DEFAULT_CACHE_BYTES,
      sizeCalculation: (ids, key) => ids.byteLength + key.length * 2 + 64,
    });
  }

  /** Loads `tokenizer.json` and `tokenizer_config.json` (chat template, special tokens) from a model directory. */
  static async load(dir: string, options: TokenizerOptions = {}): Promise<PromptTokenizer> {
    const tokenizerJson = await readFile(join(dir, 'tokenizer.json'), 'utf8').catch((err: Error) => {
      throw new Error(`cannot read tokenizer.json in ${dir}: ${err.message}`);
    });
    const tokenizer = Tokenizer.fromString(tokenizerJson);
    const parsed = JSON.parse(tokenizerJson) as { added_tokens?: { id: number; content: string; lstrip?: boolean; rstrip?: boolean }[] };
    // Only added tokens without whitespace stripping are safe split points: a
    // stripping token changes the text around it.
    const addedTokens = new Map<string, number>();
    for (const t of parsed.added_tokens ?? []) if (!t.lstrip && !t.rstrip) addedTokens.set(t.content, t.id);

    let chatTemplate: ChatTemplate | undefined;
    const configText = await readFile(join(dir, 'tokenizer_config.json'), 'utf8').catch(() => undefined);
    if (configText) {
      const config = JSON.parse(configText) as Record<string, unknown>;
      const templateSource = typeof config.chat_template === 'string' ? config.chat_template : await readFile(join(dir, 'chat_template.jinja'), 'utf8').catch(() => undefined);
      if (templateSource) {
        const specials: Record<string, string | null> = {};
        for (const key of ['bos_token', 'eos_token', 'pad_token', 'unk_token']) specials[key] = tokenString(config[key]);
        chatTemplate = new ChatTemplate(templateSource, specials);
      }
    }
    return new PromptTokenizer(tokenizer, chatTemplate, addedTokens, options);
  }

  get hasChatTemplate(): boolean {
    return this.#chatTemplate !== undefined;
  }

  /** Renders a chat request to the exact prompt text the engine will tokenize. */
  renderChat(messages: ChatMessage[], options: ChatRenderOptions = {}): string {
    if (!this.#chatTemplate) throw new Error('this tokenizer has no chat template (tokenizer_config.json chat_template)');
    return this.#chatTemplate.render(messages, options);
  }

  /** Token ids for a chat request: rendered with the template, encoded without special tokens (as vLLM does). */
  async tokenizeChat(messages: ChatMessage[], options: ChatRenderOptions = {}): Promise<number[]> {
    return this.encodeCached(this.renderChat(messages, options));
  }

  /** Token ids for a completion prompt string: encoded with the tokenizer's special tokens (BOS and the like). */
  async tokenizeCompletion(prompt: string): Promise<number[]> {
    const encoding = await this.#tokenizer.encode(prompt, null, { addSpecialTokens: true });
    return encoding.getIds();
  }

  /** Raw encode, no cache. */
  async encode(text: string, addSpecialTokens: boolean): Promise<number[]> {
    const encoding = await this.#tokenizer.encode(text, null, { addSpecialTokens });
    return encoding.getIds();
  }

  /**
   * Encodes text without special tokens, segment by segment, reusing cached
   * segments. Equal to `encode(text, false)` because added tokens are matched
   * before normalization and pre-tokenization, so no merge crosses them.
   */
  async encodeCached(text: string): Promise<number[]> {
    const pieces = this.#splitter ? text.split(this.#splitter) : [text];
    const parts: (Uint32Array | Promise<Uint32Array>)[] = [];
    for (let i = 0; i < pieces.length; i++) {
      const piece = pieces[i]!;
      if (piece.length === 0) continue;
      const addedId = i % 2 === 1 ? this.#addedTokens.get(piece) : undefined;
      if (addedId !== undefined) {
        parts.push(Uint32Array.of(addedId));
        continue;
      }
      const cached = this.#segments.get(piece);
      if (cached) {
        this.#hits += 1;
        parts.push(cached);
      } else {
        this.#misses += 1;
        parts.push(
          this.#tokenizer.encode(piece, null, { addSpecialTokens: false }).then((e) => {
            const ids = Uint32Array.from(e.getIds());
            this.#segments.set(piece, ids);
            return ids;
          }),
        );
      }
    }
    const resolved = await Promise.all(parts);
    const out: number[] = [];
    for (const ids of resolved) for (let i = 0; i < ids.length; i++) out.push(ids[i]!);
    return out;
  }

  stats(): TokenizerStats {
    return { segmentHits: this.#hits, segmentMisses: this.#misses, cacheBytes: this.#segments.calculatedSize, cacheEntries: this.#segments.size };
  }
}

function tokenString(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') return (value as { content: string }).content;
  return null;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
