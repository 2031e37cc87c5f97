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
  /**
   * `max_completion_tokens` or `max_tokens`, when given, capped at `MAX_ACCOUNTED_OUTPUT_TOKENS`.
   * The cap is for the gateway's load accounting only: the body goes upstream unchanged and
   * the engine judges an absurd value itself.
   */
  readonly maxTokens: number | undefined;
}

/**
 * Output tokens the load accounting believes at most. Beyond any real context length;
 * it keeps a request asking for 1e300 tokens from swamping the per-worker sums (where
 * adding and later subtracting such a number would lose every other request's share).
 */
export const MAX_ACCOUNTED_OUTPUT_TOKENS = 1 << 21;

/**
 * Reads the whole body, refusing more than `limit` bytes with 413 (early, from
 * `content-length`, when the client announces it). Rejects when the client
 * goes away (or the server's request timeout cuts it off) before the end.
 */
export function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) > limit) {
      reject(tooLarge(limit));
      return;
    }
    if (req.complete && req.readableEnded) {
      resolve(Buffer.alloc(0));
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
    // Without this a client that vanishes mid-body could leave the promise pending for ever.
    const onClose = () =>
      onError(
        new GatewayError(
          400,
          'client closed the connection before the body ended',
          'invalid_request_error',
          'incomplete_body',
        ),
      );
    const cleanup = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('close', onClose);
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('close', onClose);
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
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw badRequest('request body must be a JSON object', null, 'invalid_json');
  const b = body as Record<string, unknown>;
  if (typeof b.model !== 'string' || b.model === '')
    throw badRequest(`'model' must be a non-empty string`, 'model', 'invalid_type');
  checkType(b, 'stream', 'boolean');
  checkType(b, 'n', 'number');
  checkType(b, 'temperature', 'number');
  checkType(b, 'top_p', 'number');
  checkType(b, 'stream_options', 'object');
  checkType(b, 'tools', 'array');
  const maxTokens = numberField(b, 'max_completion_tokens') ?? numberField(b, 'max_tokens');
  let estimatedPromptTokens: number;
  if (kind === 'chat') {
    if (b.messages === undefined || b.messages === null)
      throw badRequest(`'messages' is required`, 'messages', 'missing_required_parameter');
    if (!Array.isArray(b.messages)) throw badRequest(`'messages' must be an array`, 'messages', 'invalid_type');
    estimatedPromptTokens = Math.ceil(messagesChars(b.messages) / 4);
  } else {
    if (b.prompt === undefined || b.prompt === null)
      throw badRequest(`'prompt' is required`, 'prompt', 'missing_required_parameter');
    estimatedPromptTokens = promptTokens(b.prompt);
  }
  return {
    kind,
    raw,
    body: b,
    model: b.model,
    stream: b.stream === true,
    estimatedPromptTokens,
    maxTokens: maxTokens === undefined ? undefined : Math.min(maxTokens, MAX_ACCOUNTED_OUTPUT_TOKENS),
  };
}

type JsonType = 'boolean' | 'number' | 'object' | 'array';

/** Optional fields: absent or null is fine (OpenAI clients send explicit nulls), anything else must have the type. */
function checkType(b: Record<string, unknown>, name: string, type: JsonType): void {
  const v = b[name];
  if (v === undefined || v === null) return;
  const ok =
    type === 'array'
      ? Array.isArray(v)
      : type === 'object'
        ? typeof v === 'object' && !Array.isArray(v)
        : type === 'number'
          ? typeof v === 'number' && Number.isFinite(v)
          : typeof v === type;
  if (!ok)
    throw badRequest(
      `'${name}' must be ${type === 'array' || type === 'object' ? 'an' : 'a'} ${type}`,
      name,
      'invalid_type',
    );
}

function numberField(b: Record<string, unknown>, name: string): number | undefined {
  const v = b[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0)
    throw badRequest(`'${name}' must be a non-negative number`, name, 'invalid_type');
  return v;
}

/**
 * Characters of the text the template will see. Media parts (images, audio) are
 * accepted and count nothing: routing goes by the text parts, the engine judges the rest.
 */
function messagesChars(messages: unknown[]): number {
  let chars = 0;
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i];
    if (typeof m !== 'object' || m === null || Array.isArray(m))
      throw badRequest(`'messages[${i}]' must be an object`, `messages[${i}]`, 'invalid_type');
    const { role, content } = m as { role?: unknown; content?: unknown };
    if (typeof role !== 'string')
      throw badRequest(`'messages[${i}].role' must be a string`, `messages[${i}].role`, 'invalid_type');
    if (typeof content === 'string') chars += content.length;
    else if (Array.isArray(content)) {
      for (const part of content) {
        const text = typeof part === 'object' && part !== null ? (part as { text?: unknown }).text : undefined;
        if (typeof text === 'string') chars += text.length;
      }
    } else if (content !== undefined && content !== null) {
      throw badRequest(
        `'messages[${i}].content' must be a string, an array of content parts or null`,
        `messages[${i}].content`,
        'invalid_type',
      );
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

/**
 * vLLM's API server refuses an inference body that is not declared JSON with a 400
 * ("Unsupported Media Type: Only 'application/json' is allowed"; a missing type counts
 * as not JSON). The gateway answers the same, so a client sees one
 * behaviour whether or not kvgate is in front, and no worker gets a `text/plain` body.
 */
export function requireJsonContentType(contentType: string | undefined): void {
  const mediaType = (contentType ?? '').split(';', 1)[0]!.trim().toLowerCase();
  if (mediaType !== 'application/json')
    throw badRequest("Unsupported Media Type: Only 'application/json' is allowed", null, 'unsupported_media_type');
}
