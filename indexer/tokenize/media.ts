import { MEDIA_TYPES } from './chat-template.js';

/**
 * Image, audio and video parts become placeholder tokens inside the engine,
 * and vLLM keys the blocks covering them by the content's hash, which the
 * gateway cannot compute (it would need the decoded media). So a prompt with
 * media is hashed only up to the first placeholder: the blocks before it are
 * exact, the first block that covers media and everything after it are not
 * predicted. vLLM's string content format puts a message's placeholders before
 * its text (joined with "\n"); we do the same with one Qwen-VL style placeholder
 * per part, so the text before the first media message renders exactly.
 */
export const MEDIA_START = '<|vision_start|>';
export const MEDIA_PLACEHOLDER = '<|vision_start|><|image_pad|><|vision_end|>';

export interface MediaMessages {
  messages: unknown[];
  /** Identity of each media part, in prompt order (its URL or data, as the request gave it). */
  media: string[];
}

function mediaType(part: unknown): string | undefined {
  if (typeof part !== 'object' || part === null) return undefined;
  const type = (part as { type?: unknown }).type;
  if (typeof type === 'string') return MEDIA_TYPES.has(type) ? type : undefined;
  return [...MEDIA_TYPES].find((key) => key in part);
}

function identity(part: Record<string, unknown>, type: string): string {
  const value = part[type] ?? part;
  if (typeof value === 'string') return value;
  const url = (value as { url?: unknown }).url;
  return typeof url === 'string' ? url : JSON.stringify(value);
}

/** The messages with media parts replaced by placeholders; undefined when there is no media part. */
export function withMediaPlaceholders(messages: readonly unknown[]): MediaMessages | undefined {
  const media: string[] = [];
  const out = messages.map((m) => {
    const content = (m as { content?: unknown } | null)?.content;
    if (!Array.isArray(content) || !content.some((p) => mediaType(p) !== undefined)) return m;
    const placeholders: string[] = [];
    const texts: unknown[] = [];
    for (const part of content) {
      const type = mediaType(part);
      if (type === undefined) texts.push(part);
      else {
        placeholders.push(MEDIA_PLACEHOLDER);
        media.push(identity(part as Record<string, unknown>, type));
      }
    }
    const rest = texts.map((p) => (typeof p === 'string' ? { type: 'text', text: p } : p));
    return { ...(m as object), content: [...placeholders.map((text) => ({ type: 'text', text })), ...rest] };
  });
  return media.length === 0 ? undefined : { messages: out, media };
}
