import type { IncomingMessage } from 'node:http';
import { badRequest, GatewayError } from './errors.js';

export type InferenceKind = 'chat' | 'completion';

/** An inference request, parsed once and checked just enough to route it. */
export interface InferenceRequest {
  readonly kind: InferenceKind;
  /** The body bytes as received; forwarded unchanged. */
  readonly raw: Buffer;
  readonly body: Record<string, unknown>;
  readonly model: string;
  readonly stream: boolean;
  /** Prompt length estimated as characters / 4 (token arrays count exactly). */
  readonly estimatedPromptTokens: number;
  /** `max_completion_tokens` or `max_tokens`, when given. */
  readonly maxTokens: number | undefined;
}

/**
 * Reads the whole body, refusing more than `limit` bytes with 413 (early, from
 * `content-length`, when the client announces it).
 */
export function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) > limit) {
      reject(tooLarge(limit));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        cleanup();
        reject(tooLarge(limit));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    const cleanup = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
  });
}

const tooLarge = (limit: number) =>
  new GatewayError(413, `request body exceeds ${limit} bytes`, 'invalid_request_error', 'request_too_large');

/** Parses and checks an OpenAI chat or completion body; a bad field is a 400 naming it. */
export function parseInference(raw: Buffer, kind: InferenceKind): InferenceRequest {
  let body: unknown;
  try {
    body = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw badRequest(`request body is not valid JSON: ${(err as Error).message}`, null, 'invalid_json');
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw badRequest('request body must be a JSON object', null, 'invalid_json');
  const b = body as Record<string, unknown>;
  if (typeof b.model !== 'string' || b.model === '') throw badRequest(`'model' must be a non-empty string`, 'model', 'invalid_type');
  if (b.stream !== undefined && b.stream !== null && typeof b.stream !== 'boolean') throw badRequest(`'stream' must be a boolean`, 'stream', 'invalid_type');
  const maxTokens = numberField(b, 'max_completion_tokens') ?? numberField(b, 'max_tokens');
  let estimatedPromptTokens: number;
  if (kind === 'chat') {
    if (!Array.isArray(b.messages)) throw badRequest(`'messages' must be an array`, 'messages', 'invalid_type');
    estimatedPromptTokens = Math.ceil(messagesChars(b.messages) / 4);
  } else {
    estimatedPromptTokens = promptTokens(b.prompt);
  }
  return { kind, raw, body: b, model: b.model, stream: b.stream === true, estimatedPromptTokens, maxTokens };
}

function numberField(b: Record<string, unknown>, name: string): number | undefined {
  const v = b[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw badRequest(`'${name}' must be a non-negative number`, name, 'invalid_type');
  return v;
}

function messagesChars(messages: unknown[]): number {
  let chars = 0;
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i];
    if (typeof m !== 'object' || m === null) throw badRequest(`'messages[${i}]' must be an object`, `messages[${i}]`, 'invalid_type');
    const content = (m as { content?: unknown }).content;
    if (typeof content === 'string') chars += content.length;
    else if (Array.isArray(content)) {
      for (const part of content) {
        const text = (part as { text?: unknown } | null)?.text;
        if (typeof text === 'string') chars += text.length;
      }
    }
    // Role markers and template text: a few tokens per message.
    chars += 16;
  }
  return chars;
}

/** `prompt` may be a string, an array of strings, token ids, or arrays of token ids. */
function promptTokens(prompt: unknown): number {
  if (typeof prompt === 'string') return Math.ceil(prompt.length / 4);
  if (!Array.isArray(prompt)) throw badRequest(`'prompt' must be a string or an array`, 'prompt', 'invalid_type');
  let tokens = 0;
  for (const p of prompt) {
    if (typeof p === 'string') tokens += Math.ceil(p.length / 4);
    else if (typeof p === 'number') tokens += 1;
    else if (Array.isArray(p)) tokens += p.length;
    else throw badRequest(`'prompt' items must be strings, token ids or arrays of token ids`, 'prompt', 'invalid_type');
  }
  return tokens;
}
