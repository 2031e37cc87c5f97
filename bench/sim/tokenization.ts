import type { IncomingMessage, ServerResponse } from 'node:http';
import { asObject, chatInput, checkModel, SimHttpError, tokenizeChatInput } from './openai.js';
import type { SimServerDeps } from './server.js';
import { readJson, sendJson } from './server.js';

// vLLM's /tokenize and /detokenize (serving_tokenization.py): the shapes the gateway answers in too.

export async function tokenize(
  d: SimServerDeps,
  req: IncomingMessage,
  res: ServerResponse,
  headers: Record<string, string>,
): Promise<void> {
  const body = asObject(await readJson(req));
  checkModel(body, d.ctx);
  const tok = d.ctx.tokenizer;
  let tokens: number[];
  if (body.messages !== undefined) {
    tokens = await tokenizeChatInput(chatInput(body), d.ctx);
  } else if (typeof body.prompt === 'string') {
    const special = body.add_special_tokens === undefined ? true : body.add_special_tokens === true;
    tokens = special ? await tok.prompt.tokenizeCompletion(body.prompt) : await tok.prompt.encode(body.prompt, false);
  } else {
    throw new SimHttpError(400, 'either prompt (a string) or messages is required', 'BadRequestError', 'prompt');
  }
  const strs = body.return_token_strs === true ? tok.tokenStrs(tokens) : null;
  sendJson(res, 200, { count: tokens.length, max_model_len: d.ctx.maxModelLen, tokens, token_strs: strs }, headers);
}

export async function detokenize(
  d: SimServerDeps,
  req: IncomingMessage,
  res: ServerResponse,
  headers: Record<string, string>,
): Promise<void> {
  const body = asObject(await readJson(req));
  checkModel(body, d.ctx);
  const tokens = body.tokens;
  const vocab = d.ctx.tokenizer.vocabSize;
  if (
    !Array.isArray(tokens) ||
    tokens.some((t) => typeof t !== 'number' || !Number.isInteger(t) || t < 0 || t >= vocab)
  ) {
    throw new SimHttpError(400, `tokens must be a list of token ids in 0..${vocab - 1}`, 'BadRequestError', 'tokens');
  }
  sendJson(res, 200, { prompt: await d.ctx.tokenizer.decode(tokens as number[]) }, headers);
}
