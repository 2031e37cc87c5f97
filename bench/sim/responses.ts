import type { IncomingMessage, ServerResponse } from 'node:http';
import { anthropicToChat } from '../../indexer/tokenize/anthropic-prompt.js';
import {
  previousOutputMessages,
  responsesToChat,
  UnconvertiblePromptError,
  type ChatShape,
} from '../../indexer/tokenize/responses-prompt.js';
import type { ChatMessage } from '../../indexer/tokenize/chat-template.js';
import { asObject, checkModel, randomHex, SimHttpError, tokenizeChatInput, type OpenAiContext } from './openai.js';
import { runGeneration, sendEvent, startStream } from './run.js';
import type { SimServerDeps } from './server.js';
import { readJson, sendJson } from './server.js';

type Obj = Record<string, unknown>;
type Headers = Record<string, string>;

/** vLLM keeps stored responses in the serving process; so does each simulated worker (oldest dropped beyond this). */
const MAX_STORED = 10_000;
const stored = new WeakMap<OpenAiContext, Map<string, { response: Obj; messages: Obj[] }>>();
const storeOf = (ctx: OpenAiContext) => {
  let s = stored.get(ctx);
  if (!s) stored.set(ctx, (s = new Map<string, { response: Obj; messages: Obj[] }>()));
  return s;
};

const bad = (message: string, param: string | null = null) => new SimHttpError(400, message, 'BadRequestError', param);

function maxTokensOf(body: Obj, key: string, required: boolean): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) {
    if (required) throw bad(`${key} is required`, key);
    return undefined;
  }
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw bad(`${key} must be an integer >= 1`, key);
  return v;
}

async function promptOf(shape: () => ChatShape, ctx: OpenAiContext): Promise<{ ids: number[]; messages: Obj[] }> {
  let chat: ChatShape;
  try {
    chat = shape();
  } catch (err) {
    if (err instanceof UnconvertiblePromptError) throw bad(err.message, err.param);
    throw err;
  }
  const ids = await tokenizeChatInput(
    {
      messages: chat.messages as unknown as ChatMessage[],
      tools: chat.tools,
      addGenerationPrompt: true,
      templateKwargs: chat.templateKwargs,
      media: [],
    },
    ctx,
  );
  return { ids, messages: chat.messages };
}

function budget(ctx: OpenAiContext, promptLen: number, explicit: number | undefined): number {
  if (promptLen >= ctx.maxModelLen)
    throw bad(`the prompt has ${promptLen} tokens, over max_model_len ${ctx.maxModelLen}`);
  return explicit ?? Math.max(1, Math.min(ctx.defaultChatTokens, ctx.maxModelLen - promptLen));
}

/** `POST /v1/responses`: vLLM's Responses API, with stored responses and `previous_response_id`. */
export async function createResponse(d: SimServerDeps, req: IncomingMessage, res: ServerResponse, h: Headers) {
  const body = asObject(await readJson(req));
  checkModel(body, d.ctx);
  const store = storeOf(d.ctx);
  let previous: Obj[] | undefined;
  if (typeof body.previous_response_id === 'string') {
    const prev = store.get(body.previous_response_id);
    if (!prev)
      throw new SimHttpError(
        404,
        `Response with id '${body.previous_response_id}' not found.`,
        'invalid_request_error',
      );
    previous = [...prev.messages, ...previousOutputMessages(prev.response)];
  }
  const { ids, messages } = await promptOf(() => responsesToChat(body, previous), d.ctx);
  const explicit = maxTokensOf(body, 'max_output_tokens', false);
  const maxTokens = budget(d.ctx, ids.length, explicit);
  const id = `resp_${randomHex(16)}`;
  const msgId = `msg_${randomHex(16)}`;
  const stream = body.stream === true;
  const response = (status: string, text: string, usage: Obj | null): Obj => ({
    id,
    object: 'response',
    created_at: Math.floor(Date.now() / 1000),
    model: d.ctx.model,
    status,
    instructions: body.instructions ?? null,
    max_output_tokens: explicit ?? null,
    previous_response_id: body.previous_response_id ?? null,
    store: body.store !== false,
    tools: body.tools ?? [],
    tool_choice: body.tool_choice ?? 'auto',
    parallel_tool_calls: true,
    temperature: body.temperature ?? 1,
    top_p: body.top_p ?? 1,
    metadata: body.metadata ?? null,
    error: null,
    incomplete_details: status === 'incomplete' ? { reason: 'max_output_tokens' } : null,
    output:
      status === 'in_progress'
        ? []
        : [
            {
              id: msgId,
              type: 'message',
              role: 'assistant',
              status: 'completed',
              content: [{ type: 'output_text', text, annotations: [], logprobs: null }],
            },
          ],
    usage,
  });
  let seq = 0;
  const event = (type: string, data: Obj) => sendEvent(res, type, { type, sequence_number: seq++, ...data });
  if (stream) {
    startStream(res, h);
    event('response.created', { response: response('in_progress', '', null) });
    event('response.in_progress', { response: response('in_progress', '', null) });
  }
  runGeneration(d, res, id, ids, maxTokens, explicit === undefined ? 'stop' : 'length', {
    piece: stream
      ? (text, index) => {
          if (index === 0) {
            const item = { id: msgId, type: 'message', role: 'assistant', status: 'in_progress', content: [] };
            event('response.output_item.added', { output_index: 0, item });
            const part = { type: 'output_text', text: '', annotations: [] };
            event('response.content_part.added', { item_id: msgId, output_index: 0, content_index: 0, part });
          }
          event('response.output_text.delta', { item_id: msgId, output_index: 0, content_index: 0, delta: text });
        }
      : undefined,
    done(r, reason, text) {
      const usage = {
        input_tokens: r.promptLength,
        input_tokens_details: { cached_tokens: Math.max(0, r.cachedTokens) },
        output_tokens: r.outputCount,
        output_tokens_details: { reasoning_tokens: 0 },
        total_tokens: r.promptLength + r.outputCount,
      };
      const final = response(reason === 'length' ? 'incomplete' : 'completed', text, usage);
      if (body.store !== false) {
        store.set(id, { response: final, messages });
        if (store.size > MAX_STORED) store.delete(store.keys().next().value as string);
      }
      if (!stream) return sendJson(res, 200, final, h);
      const output = (final.output as Obj[])[0]!;
      const part = (output.content as Obj[])[0];
      event('response.output_text.done', { item_id: msgId, output_index: 0, content_index: 0, text });
      event('response.content_part.done', { item_id: msgId, output_index: 0, content_index: 0, part });
      event('response.output_item.done', { output_index: 0, item: output });
      event(final.status === 'completed' ? 'response.completed' : 'response.incomplete', { response: final });
      res.end();
    },
    failed(message) {
      const err = bad(message);
      if (!stream) return sendJson(res, 400, err.body(), h);
      event('error', { code: '400', message, param: null });
      res.end();
    },
  });
}

/** Throws stay inside the promise, where the router answers them. */
export const storedResponse = (d: SimServerDeps, req: IncomingMessage, res: ServerResponse, h: Headers) =>
  Promise.resolve().then(() => storedResponseSync(d, req, res, h));

/** `GET|DELETE /v1/responses/{id}` and `POST /v1/responses/{id}/cancel`; other paths under it are 404. */
function storedResponseSync(d: SimServerDeps, req: IncomingMessage, res: ServerResponse, h: Headers) {
  const path = (req.url ?? '/').split('?')[0]!;
  const m = /^\/v1\/responses\/([^/]+)(\/cancel)?$/.exec(path);
  const method = req.method ?? 'GET';
  if (!m) return sendJson(res, 404, { detail: 'Not Found' }, h);
  const cancel = m[2] !== undefined;
  if (cancel ? method !== 'POST' : method !== 'GET' && method !== 'DELETE')
    return sendJson(res, 405, { detail: 'Method Not Allowed' }, h);
  const store = storeOf(d.ctx);
  const entry = store.get(m[1]!);
  if (!entry) throw new SimHttpError(404, `Response with id '${m[1]}' not found.`, 'invalid_request_error');
  if (cancel) throw bad('Cannot cancel a synchronous response.');
  if (method === 'DELETE') {
    store.delete(m[1]!);
    return sendJson(res, 200, { id: m[1], object: 'response', deleted: true }, h);
  }
  sendJson(res, 200, entry.response, h);
}

/** `POST /v1/messages`: the Anthropic Messages API as vLLM serves it, streaming events included. */
export async function createMessage(d: SimServerDeps, req: IncomingMessage, res: ServerResponse, h: Headers) {
  const body = asObject(await readJson(req));
  checkModel(body, d.ctx);
  const maxTokens = budget(d.ctx, 0, maxTokensOf(body, 'max_tokens', true));
  const { ids } = await promptOf(() => anthropicToChat(body), d.ctx);
  budget(d.ctx, ids.length + maxTokens - 1, maxTokens);
  const id = `msg_${randomHex(12)}`;
  const stream = body.stream === true;
  const message = (content: Obj[], stop: string | null, usage: Obj): Obj => ({
    id,
    type: 'message',
    role: 'assistant',
    model: d.ctx.model,
    content,
    stop_reason: stop,
    stop_sequence: null,
    usage,
  });
  if (stream) {
    startStream(res, h);
    sendEvent(res, 'message_start', {
      type: 'message_start',
      message: message([], null, { input_tokens: ids.length, output_tokens: 0 }),
    });
  }
  runGeneration(d, res, id, ids, maxTokens, 'length', {
    piece: stream
      ? (text, index) => {
          if (index === 0)
            sendEvent(res, 'content_block_start', {
              type: 'content_block_start',
              index: 0,
              content_block: { type: 'text', text: '' },
            });
          sendEvent(res, 'content_block_delta', {
            type: 'content_block_delta',
            index: 0,
            delta: { type: 'text_delta', text },
          });
        }
      : undefined,
    done(r, _reason, text) {
      const usage = {
        input_tokens: r.promptLength,
        output_tokens: r.outputCount,
        cache_read_input_tokens: Math.max(0, r.cachedTokens),
      };
      if (!stream) return sendJson(res, 200, message([{ type: 'text', text }], 'max_tokens', usage), h);
      sendEvent(res, 'content_block_stop', { type: 'content_block_stop', index: 0 });
      sendEvent(res, 'message_delta', {
        type: 'message_delta',
        delta: { stop_reason: 'max_tokens', stop_sequence: null },
        usage,
      });
      sendEvent(res, 'message_stop', { type: 'message_stop' });
      res.end();
    },
    failed(message) {
      const err = { type: 'error', error: { type: 'invalid_request_error', message } };
      if (!stream) return sendJson(res, 400, err, h);
      sendEvent(res, 'error', err);
      res.end();
    },
  });
}
