/**
 * The chat messages vLLM renders for the Responses API and the Anthropic
 * Messages API. vLLM turns both into chat-template input before tokenizing, so
 * the gateway (to hash the same blocks) and the simulator (to compute the same
 * tokens) convert them here, the one way. Text parts are joined with a newline,
 * as vLLM's string content format does; a shape that cannot be reproduced
 * exactly (media, unknown item types) throws `UnconvertiblePromptError` and the
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
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Text of a content value: a string, or a list of text-like parts (`text`, `input_text`, `output_text`). */
function partsText(content: unknown, param: string): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) throw new UnconvertiblePromptError(`${param} must be a string or a list`, param);
  const texts: string[] = [];
  content.forEach((p, i) => {
    const type = isObj(p) ? p.type : undefined;
    if (isObj(p) && (type === 'text' || type === 'input_text' || type === 'output_text') && typeof p.text === 'string')
      texts.push(p.text);
    else throw new UnconvertiblePromptError(`${param}[${i}] is not a text part`, `${param}[${i}]`);
  });
  return texts.join('\n');
}

/** A Responses function tool (`{type, name, description, parameters}`) as a chat tool. */
function responsesTool(tool: unknown, i: number): Obj {
  if (!isObj(tool) || tool.type !== 'function' || typeof tool.name !== 'string')
    throw new UnconvertiblePromptError(`tools[${i}] must be a function tool with a name`, `tools[${i}]`);
  const fn: Obj = { name: tool.name };
  if (tool.description !== undefined && tool.description !== null) fn.description = tool.description;
  if (tool.parameters !== undefined && tool.parameters !== null) fn.parameters = tool.parameters;
  return { type: 'function', function: fn };
}

/** One Responses input item as a chat message (messages and function-call outputs; other items are not reproduced). */
function responsesItem(item: unknown, i: number): Obj {
  const param = `input[${i}]`;
  if (!isObj(item)) throw new UnconvertiblePromptError(`${param} must be an object`, param);
  const type = item.type ?? 'message';
  if (type === 'message' && typeof item.role === 'string')
    return { role: item.role, content: partsText(item.content, `${param}.content`) };
  if (type === 'function_call_output' && typeof item.output === 'string')
    return { role: 'tool', content: item.output, tool_call_id: item.call_id };
  throw new UnconvertiblePromptError(
    `${param}: item type ${JSON.stringify(type)} is not reproduced by the gateway`,
    param,
  );
}

/**
 * vLLM's Responses prompt: `instructions` as the system message, then the
 * stored conversation of `previous` (its own system message dropped, its output
 * appended as the assistant's turn), then the new input.
 */
export function responsesToChat(body: Obj, previous?: readonly Obj[]): ChatShape {
  const messages: Obj[] = [];
  if (typeof body.instructions === 'string' && body.instructions !== '')
    messages.push({ role: 'system', content: body.instructions });
  if (previous) messages.push(...(previous[0]?.role === 'system' ? previous.slice(1) : previous));
  const input = body.input;
  if (typeof input === 'string') messages.push({ role: 'user', content: input });
  else if (Array.isArray(input)) input.forEach((item, i) => messages.push(responsesItem(item, i)));
  else throw new UnconvertiblePromptError(`'input' must be a string or a list of items`, 'input');
  const tools = Array.isArray(body.tools) && body.tools.length > 0 ? body.tools.map(responsesTool) : undefined;
  return { messages, tools };
}

/** An Anthropic content list: text blocks join into the content, tool_use blocks become tool calls, tool_result blocks tool messages. */
function anthropicMessage(m: unknown, i: number): Obj[] {
  const param = `messages[${i}]`;
  if (!isObj(m) || (m.role !== 'user' && m.role !== 'assistant'))
    throw new UnconvertiblePromptError(`${param} must have role 'user' or 'assistant'`, `${param}.role`);
  if (typeof m.content === 'string') return [{ role: m.role, content: m.content }];
  if (!Array.isArray(m.content))
    throw new UnconvertiblePromptError(`${param}.content must be a string or a list`, `${param}.content`);
  const texts: string[] = [];
  const toolCalls: Obj[] = [];
  const results: Obj[] = [];
  m.content.forEach((b, j) => {
    const at = `${param}.content[${j}]`;
    if (isObj(b) && b.type === 'text' && typeof b.text === 'string') texts.push(b.text);
    else if (isObj(b) && b.type === 'tool_use' && typeof b.name === 'string')
      toolCalls.push({
        id: b.id,
        type: 'function',
        function: { name: b.name, arguments: JSON.stringify(b.input ?? {}) },
      });
    else if (isObj(b) && b.type === 'tool_result')
      results.push({ role: 'tool', tool_call_id: b.tool_use_id, content: partsText(b.content ?? '', `${at}.content`) });
    else throw new UnconvertiblePromptError(`${at} is not a text, tool_use or tool_result block`, at);
  });
  const out: Obj[] = [...results];
  if (texts.length > 0 || toolCalls.length > 0 || results.length === 0) {
    const msg: Obj = { role: m.role, content: texts.join('\n') };
    if (toolCalls.length > 0) msg.tool_calls = toolCalls;
    out.push(msg);
  }
  return out;
}

/** vLLM's Anthropic conversion: `system` (string or text blocks) first, then each message, tools as function tools. */
export function anthropicToChat(body: Obj): ChatShape {
  const messages: Obj[] = [];
  if (body.system !== undefined && body.system !== null)
    messages.push({ role: 'system', content: partsText(body.system, 'system') });
  if (!Array.isArray(body.messages) || body.messages.length === 0)
    throw new UnconvertiblePromptError(`'messages' must be a non-empty list`, 'messages');
  body.messages.forEach((m, i) => messages.push(...anthropicMessage(m, i)));
  let tools: Obj[] | undefined;
  if (Array.isArray(body.tools) && body.tools.length > 0)
    tools = body.tools.map((t, i) => {
      if (!isObj(t) || typeof t.name !== 'string')
        throw new UnconvertiblePromptError(`tools[${i}] must have a name`, `tools[${i}]`);
      const fn: Obj = { name: t.name, parameters: t.input_schema ?? {} };
      if (typeof t.description === 'string') fn.description = t.description;
      return { type: 'function', function: fn };
    });
  return { messages, tools };
}
