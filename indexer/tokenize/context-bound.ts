import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Bounding the tokenization of huge prompts by the model's context length.
 *
 * A prompt far over the context length (a 20 MB body is under the body limit) would
 * cost the gateway tens of seconds of CPU to tokenize, only for the engine to refuse
 * it. No token stands for more than `maxCharsPerToken` characters (the longest
 * vocabulary entry), so a text longer than `limit × maxCharsPerToken` is over the
 * limit before any work (vLLM's own renderer makes the same check); between that and
 * a few characters per token, growing prefixes are counted until one passes the limit.
 */
export interface TokenLengths {
  /** The most characters one token stands for. */
  readonly maxCharsPerToken: number;
  /** `model_max_length` from tokenizer_config.json, when it is a real limit (HF writes 1e30 for none). */
  readonly modelMaxLength: number | undefined;
}

/** Prompt over the context length; `count` is exact or, when counting stopped early, a lower bound. */
export class ContextLengthError extends Error {
  override name = 'ContextLengthError';
  constructor(
    readonly limit: number,
    readonly count: number,
    readonly unit: 'tokens' | 'characters',
    readonly atLeast: boolean,
  ) {
    super(`prompt of ${atLeast ? 'at least ' : ''}${count} ${unit} is over the context length of ${limit} tokens`);
  }
}

/** Texts up to this many characters per token of the limit are tokenized whole: bounded work, exact count. */
const WHOLE_CHARS_PER_TOKEN = 4;
/** A prefix cut where no whitespace is near may split a token in two: demand this many tokens beyond the limit. */
const CUT_SLACK = 2;

/** Reads the bounds from a tokenizer's files (`tokenizer.json` already parsed). */
export async function tokenLengths(dir: string, tokenizerJson: unknown): Promise<TokenLengths> {
  const t = tokenizerJson as { model?: { vocab?: unknown }; added_tokens?: { content?: unknown }[] };
  let longest = 1;
  const vocab = t.model?.vocab;
  // BPE vocabularies are maps, Unigram ones [piece, score] pairs; a byte-level piece has one code point per byte.
  const pieces: unknown[] = Array.isArray(vocab)
    ? vocab.map((v: unknown): unknown => (Array.isArray(v) ? (v as unknown[])[0] : v))
    : typeof vocab === 'object' && vocab !== null
      ? Object.keys(vocab)
      : [];
  for (const p of pieces) if (typeof p === 'string' && p.length > longest) longest = p.length;
  for (const a of t.added_tokens ?? [])
    if (typeof a.content === 'string') longest = Math.max(longest, a.content.length);
  const configText = await readFile(join(dir, 'tokenizer_config.json'), 'utf8').catch(() => undefined);
  let modelMaxLength: number | undefined;
  if (configText) {
    const value = (JSON.parse(configText) as { model_max_length?: unknown }).model_max_length;
    if (typeof value === 'number' && Number.isInteger(value) && value > 0 && value < 1e8) modelMaxLength = value;
  }
  return { maxCharsPerToken: longest, modelMaxLength };
}

/**
 * Throws ContextLengthError when `text` certainly has at least `limit` tokens, doing at
 * most about twice the tokenization of `limit × WHOLE_CHARS_PER_TOKEN` characters per
 * probe round; returns when the text is short enough to tokenize whole.
 */
export async function boundText(
  text: string,
  limit: number,
  lengths: TokenLengths,
  count: (prefix: string) => Promise<number>,
): Promise<void> {
  if (text.length <= limit * WHOLE_CHARS_PER_TOKEN) return;
  if (text.length > limit * lengths.maxCharsPerToken)
    throw new ContextLengthError(limit, text.length, 'characters', false);
  for (let end = limit * WHOLE_CHARS_PER_TOKEN; end < text.length; end *= 2) {
    const n = await count(text.slice(0, cutBefore(text, end)));
    if (n >= limit + CUT_SLACK) throw new ContextLengthError(limit, n, 'tokens', true);
  }
}

/** The engine refuses a prompt that leaves no room for one output token. */
export function boundIds(ids: readonly number[], limit: number): void {
  if (ids.length >= limit) throw new ContextLengthError(limit, ids.length, 'tokens', false);
}

/**
 * Where to cut a prefix so that it tokenizes as the same text does inside the whole:
 * before a whitespace run (pre-tokenizers split there), never inside a surrogate pair.
 */
function cutBefore(text: string, end: number): number {
  const floor = Math.max(1, end - 1024);
  let i = end;
  while (i > floor && !/\s/.test(text[i]!)) i--;
  if (i > floor) {
    while (i > floor && /\s/.test(text[i - 1]!)) i--;
    return i;
  }
  const code = text.charCodeAt(end - 1);
  return code >= 0xd800 && code <= 0xdbff ? end - 1 : end;
}
