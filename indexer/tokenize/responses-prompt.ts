/**
 * The chat messages vLLM renders for the Responses API. vLLM turns a Responses
 * request into chat-template input before tokenizing, so the gateway (to hash
 * the same blocks) and the simulator (to compute the same tokens) convert it
 * here, the one way; test/indexer/tokenize/responses-prompt.test.ts pins the
 * output to vLLM's code (vllm/entrypoints/openai/responses/utils.py). The
 * messages keep the request's shapes (content parts, tool-call arguments as
 * strings): the chat path normalises them as vLLM's chat parser does. A shape
 * that cannot be reproduced exactly throws `UnconvertiblePromptError` and the
 * caller routes without blocks.
 */

export class UnconvertiblePromptError extends Error {
  constructor(
    message: string,
    readonly param: string,
  ) {
    super(message);
  }
}

export interface ChatShape {
  messages: Record<string, unknown>[];
  tools: Record<string, unknown>[] | undefined;
  /** The request's `chat_template_kwargs`, when the API forwards them (Messages does). */
  templateKwargs?: Record<string, unknown> | undefined;
}

type Obj = Record<string, unknown>;
export const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const unconvertible = (message: string, param: string) => new UnconvertiblePromptError(message, param);

/**
 * `construct_tool_dicts`: each function tool becomes `{type: "function",
 * function: <every field but type>}` (strict included). Other tool types are
 * not reproduced.
 */
function responsesTool(tool: unknown, i: number): Obj {
  if (!isObj(tool) || tool.type !== 'function' || typeof tool.name !== 'string')
    throw unconvertible(`tools[${i}] must be a function tool with a name`, `tools[${i}]`);
  const { type: _type, ...fn } = tool;
  return { type: 'function', function: fn };
}

/** The text vLLM takes from an assistant item: its first content part's only (`content[0].text`). */
function firstText(content: unknown, param: string): string {
  if (typeof content === 'string') return content;
  if (content === undefined || content === null) return '';
  if (!Array.isArray(content)) throw unconvertible(`${param} must be a string or a list`, param);
  const first: unknown = content[0];
  if (first === undefined) return '';
  if (typeof first === 'string') return first;
  if (isObj(first) && (first.text === undefined || typeof first.text === 'string')) return first.text ?? '';
  throw unconvertible(`${param}[0] has no text`, `${param}[0]`);
}

/** A reasoning item's text: `content[0].text`, else `summary[0].text`, else "". */
function reasoningText(item: Obj, param: string): string {
  if (item.encrypted_content !== undefined && item.encrypted_content !== null)
    throw unconvertible(`${param}: encrypted reasoning is not supported`, param);
  for (const key of ['content', 'summary'] as const) {
    const list = item[key];
    if (!Array.isArray(list) || list.length === 0) continue;
    const first: unknown = list[0];
    if (typeof first === 'string') return first;
    if (isObj(first) && (first.text === undefined || typeof first.text === 'string')) return first.text ?? '';
    throw unconvertible(`${param}.${key}[0] has no text`, `${param}.${key}[0]`);
  }
  return '';
}

/**
 * `_construct_message_from_response_item`: one input item as a chat message,
 * or undefined when it was merged into the previous assistant message (a
 * function call joins its `tool_calls`, reasoning or text fills its empty
 * `reasoning` or `content`). User, system and developer messages pass as they are.
 */
function responsesItem(item: unknown, i: number, prev: Obj | undefined): Obj | undefined {
  const param = `input[${i}]`;
  if (!isObj(item)) throw unconvertible(`${param} must be an object`, param);
  const assistant = prev?.role === 'assistant' ? prev : undefined;
  const type = item.type;
  if (type === 'function_call') {
    if (typeof item.name !== 'string' || typeof item.arguments !== 'string' || typeof item.call_id !== 'string')
      throw unconvertible(`${param}: a function_call needs name, arguments and call_id strings`, param);
    if (item.namespace !== undefined && item.namespace !== null)
      throw unconvertible(`${param}: namespaced function calls are not reproduced`, param);
    const call = { id: item.call_id, function: { name: item.name, arguments: item.arguments }, type: 'function' };
    if (assistant) {
      if (assistant.tool_calls === undefined) assistant.tool_calls = [call];
      else (assistant.tool_calls as Obj[]).push(call);
      return undefined;
    }
    return { role: 'assistant', tool_calls: [call] };
  }
  if (type === 'function_call_output') {
    if (typeof item.output !== 'string')
      throw unconvertible(`${param}: only a string function_call_output is reproduced`, `${param}.output`);
    return { role: 'tool', content: item.output, tool_call_id: item.call_id };
  }
  if (type === 'reasoning') {
    const reasoning = reasoningText(item, param);
    if (assistant && assistant.reasoning === undefined) {
      assistant.reasoning = reasoning;
      return undefined;
    }
    return { role: 'assistant', reasoning };
  }
  if (type !== undefined && type !== 'message')
    throw unconvertible(`${param}: item type ${JSON.stringify(type)} is not reproduced by the gateway`, param);
  if (item.role === 'assistant') {
    const text = firstText(item.content, `${param}.content`);
    if (assistant && assistant.content === undefined) {
      assistant.content = text;
      return undefined;
    }
    return { role: 'assistant', content: text };
  }
  if (typeof item.role !== 'string') throw unconvertible(`${param} has no role`, `${param}.role`);
  return item;
}

/** `should_continue_final_message`: a last message or reasoning item still in progress is continued, not answered. */
function continuesFinal(input: unknown[]): boolean {
  const last = input[input.length - 1];
  if (!isObj(last) || !['message', 'reasoning', undefined].includes(last.type as string | undefined)) return false;
  return last.status === 'in_progress' || last.status === 'incomplete';
}

/**
 * `construct_input_messages`: `instructions` as the system message, then the
 * stored conversation of `previous` without its system messages (instructions
 * do not carry over; its output is already appended, see
 * `previousOutputMessages`), then the new input: a string is one user turn,
 * items convert one by one (merging only among themselves).
 */
export function responsesToChat(body: Obj, previous?: readonly Obj[]): ChatShape {
  const messages: Obj[] = [];
  if (typeof body.instructions === 'string' && body.instructions !== '')
    messages.push({ role: 'system', content: body.instructions });
  if (previous) messages.push(...previous.filter((m) => m.role !== 'system'));
  const input = body.input;
  if (typeof input === 'string') messages.push({ role: 'user', content: input });
  else if (Array.isArray(input)) {
    // vLLM then sets continue_final_message and no generation prompt; not reproduced.
    if (continuesFinal(input))
      throw unconvertible(`the last input item is in progress: its continuation is not reproduced`, 'input');
    const items: Obj[] = [];
    (input as unknown[]).forEach((item, i) => {
      const message = responsesItem(item, i, items[items.length - 1]);
      if (message) items.push(message === item ? { ...message } : message);
    });
    messages.push(...items);
  } else throw unconvertible(`'input' must be a string or a list of items`, 'input');
  const tools = Array.isArray(body.tools) && body.tools.length > 0 ? body.tools.map(responsesTool) : undefined;
  return { messages, tools };
}

/**
 * What vLLM appends to a stored conversation for the next turn: one assistant
 * message per content part of each output message (reasoning and function
 * calls of the output are skipped).
 */
export function previousOutputMessages(response: Obj): Obj[] {
  const out: Obj[] = [];
  for (const item of Array.isArray(response.output) ? (response.output as unknown[]) : []) {
    if (!isObj(item) || item.type !== 'message' || !Array.isArray(item.content)) continue;
    for (const c of item.content as unknown[])
      if (isObj(c) && typeof c.text === 'string') out.push({ role: 'assistant', content: c.text });
  }
  return out;
}
