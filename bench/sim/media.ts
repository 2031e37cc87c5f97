import { MEDIA_START, withMediaPlaceholders } from '../../indexer/tokenize/media.js';
import type { SimTokenizer } from './text.js';

/** Tokens of one media item in the prompt, keyed by its content (vLLM: the multimodal hash in the blocks' extra keys). */
export interface MediaSpan {
  readonly start: number;
  readonly end: number;
  readonly key: string;
}

/**
 * The simulator stands in for a vision model: each image, audio or video part
 * becomes a placeholder (media.ts in the indexer), and the blocks that cover
 * it are keyed by its URL or data, so two different images never share a block.
 */
export function mediaMessages(messages: unknown[]): { messages: unknown[]; media: string[] } {
  return withMediaPlaceholders(messages) ?? { messages, media: [] };
}

export async function mediaSpans(tokens: readonly number[], media: readonly string[], tok: SimTokenizer) {
  if (media.length === 0) return [];
  const [startId] = await tok.prompt.encode(MEDIA_START, false);
  const spans: MediaSpan[] = [];
  for (let i = 0, k = 0; i < tokens.length && k < media.length; i++) {
    // The placeholder is three special tokens: start, pad, end.
    if (tokens[i] === startId) spans.push({ start: i, end: i + 3, key: media[k++]! });
  }
  return spans;
}

/** The extra keys of block [from, to): the media it covers. */
export function mediaKeysOf(spans: readonly MediaSpan[], from: number, to: number): string[] {
  return spans.filter((s) => s.start < to && s.end > from).map((s) => s.key);
}
