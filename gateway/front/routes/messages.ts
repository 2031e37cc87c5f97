import { anthropicToChat } from '../../../indexer/tokenize/anthropic-prompt.js';
import { badRequest } from '../errors.js';
import { MAX_ACCOUNTED_OUTPUT_TOKENS, type InferenceRequest } from '../request.js';
import { jsonObject, optionalType } from './body.js';
import { convert } from './responses.js';

/**
 * Parses `POST /v1/messages` (Anthropic Messages as vLLM serves it). The routed
 * body is the chat request vLLM converts it to (system, messages, tool calls
 * and results, tools), so the strategies see the engine's blocks; the raw body
 * goes upstream unchanged.
 */
export function parseMessages(raw: Buffer): InferenceRequest {
  const b = jsonObject(raw);
  if (typeof b.model !== 'string' || b.model === '')
    throw badRequest(`'model' must be a non-empty string`, 'model', 'invalid_type');
  if (!Array.isArray(b.messages) || b.messages.length === 0)
    throw badRequest(`'messages' must be a non-empty array`, 'messages', 'invalid_type');
  if (typeof b.max_tokens !== 'number' || !Number.isInteger(b.max_tokens) || b.max_tokens < 1)
    throw badRequest(`'max_tokens' is required: an integer >= 1`, 'max_tokens', 'invalid_type');
  optionalType(b, 'stream', 'boolean');
  optionalType(b, 'tools', 'array');
  const chat = convert(() => anthropicToChat(b));
  const body: Record<string, unknown> = { model: b.model };
  if (chat) {
    body.messages = chat.messages;
    if (chat.tools) body.tools = chat.tools;
    if (chat.templateKwargs) body.chat_template_kwargs = chat.templateKwargs;
  }
  return {
    kind: 'chat',
    raw,
    body,
    model: b.model,
    stream: b.stream === true,
    estimatedPromptTokens: Math.ceil(JSON.stringify(chat?.messages ?? b.messages).length / 4),
    maxTokens: Math.min(b.max_tokens, MAX_ACCOUNTED_OUTPUT_TOKENS),
  };
}
