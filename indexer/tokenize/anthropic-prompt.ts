import { isObj, UnconvertiblePromptError, type ChatShape } from './responses-prompt.js';

/**
 * The chat request vLLM converts an Anthropic Messages request to
 * (vllm/entrypoints/anthropic/serving.py, `AnthropicServingMessages.
 * _convert_anthropic_to_openai_request`), shared by the gateway and the
 * simulator; test/indexer/tokenize/responses-prompt.test.ts pins it to that
 * code. Images become media the gateway cannot count, so they (and anything
 * else not reproduced exactly) throw `UnconvertiblePromptError`.
 */

type Obj = Record<string, unknown>;
const unconvertible = (message: string, param: string) => new UnconvertiblePromptError(message, param);

/** Claude Code's per-request attribution header: vLLM drops it so the prefix stays cacheable. */
const BILLING_HEADER = 'x-anthropic-billing-header';

/** Claude Code CLI's non-standard roles, as vLLM's `AnthropicMessage.normalize_role` maps them. */
const ROLE_MAP: Record<string, string> = { ctx: 'user', msg: 'user' };

function roleOf(m: unknown, i: number): string {
  const role = isObj(m) && typeof m.role === 'string' ? (ROLE_MAP[m.role] ?? m.role) : undefined;
  if (role !== 'user' && role !== 'assistant' && role !== 'system')
    throw unconvertible(`messages[${i}] must have role 'user', 'assistant' or 'system'`, `messages[${i}].role`);
  return role;
}

/** The text blocks of a system value (truthy text, billing header skipped). */
function systemTexts(content: unknown, param: string): string[] {
  if (typeof content === 'string') return [content];
  if (!Array.isArray(content)) throw unconvertible(`${param} must be a string or a list of blocks`, param);
  const texts: string[] = [];
  for (const b of content)
    if (isObj(b) && b.type === 'text' && typeof b.text === 'string' && b.text && !b.text.startsWith(BILLING_HEADER))
      texts.push(b.text);
  return texts;
}

/**
 * `_convert_system_message`: the top-level `system` and every system-role
 * message, concatenated with nothing between them; no system message when
 * that is empty.
 */
function systemMessage(body: Obj, messages: readonly unknown[]): Obj | undefined {
  const parts: string[] = [];
  if (body.system) parts.push(...systemTexts(body.system, 'system'));
  messages.forEach((m, i) => {
    if (roleOf(m, i) === 'system') parts.push(...systemTexts((m as Obj).content, `messages[${i}].content`));
  });
  return parts.length > 0 ? { role: 'system', content: parts.join('') } : undefined;
}

/** `_convert_user_tool_result`: a tool message (string, or text items joined with "\n"); images are not reproduced. */
function userToolResult(b: Obj, at: string): Obj[] {
  let text = '';
  const references: Obj[] = [];
  if (typeof b.content === 'string') text = b.content;
  else if (Array.isArray(b.content)) {
    const texts: string[] = [];
    for (const item of b.content) {
      if (!isObj(item)) continue;
      if (item.type === 'text') texts.push(typeof item.text === 'string' ? item.text : '');
      else if (item.type === 'image') throw unconvertible(`${at} holds an image`, `${at}.content`);
      else if (item.type === 'tool_reference') {
        const name = item.tool_name || item.name;
        if (typeof name === 'string' && name) references.push({ type: 'tool_reference', name });
      }
    }
    text = texts.join('\n');
  }
  const id = typeof b.tool_use_id === 'string' ? b.tool_use_id : '';
  const out: Obj[] = [{ role: 'tool', tool_call_id: id, content: text }];
  if (references.length > 0) out.push({ role: 'tool', tool_call_id: id, content: references });
  return out;
}

/**
 * `_convert_messages` for one non-system message: text blocks become content
 * parts (one text part collapses to a string), thinking becomes `reasoning`,
 * tool_use blocks tool calls, a user's tool_result blocks tool messages placed
 * before it, an assistant's tool_result blocks "Tool result: ..." text. A user
 * message left with no content is dropped.
 */
function convertMessage(m: Obj, role: string, i: number, out: Obj[]): void {
  const message: Obj = { role };
  if (typeof m.content === 'string') {
    out.push({ role, content: m.content });
    return;
  }
  if (!Array.isArray(m.content))
    throw unconvertible(`messages[${i}].content must be a string or a list`, `messages[${i}].content`);
  const parts: Obj[] = [];
  const toolCalls: Obj[] = [];
  const reasoning: string[] = [];
  m.content.forEach((b: unknown, j) => {
    const at = `messages[${i}].content[${j}]`;
    if (!isObj(b)) throw unconvertible(`${at} must be a block`, at);
    if (b.type === 'text') {
      if (typeof b.text === 'string' && b.text) parts.push({ type: 'text', text: b.text });
    } else if (b.type === 'image') {
      if (b.source) throw unconvertible(`${at} is an image: its tokens are the engine's`, at);
    } else if (b.type === 'thinking') {
      if (typeof b.thinking === 'string') reasoning.push(b.thinking);
    } else if (b.type === 'tool_use') {
      // Without an id vLLM invents one from the clock.
      if (typeof b.id !== 'string' || !b.id) throw unconvertible(`${at} has no id`, `${at}.id`);
      const args = JSON.stringify(isObj(b.input) && Object.keys(b.input).length > 0 ? b.input : {});
      const name = typeof b.name === 'string' ? b.name : '';
      toolCalls.push({ id: b.id, type: 'function', function: { name, arguments: args } });
    } else if (b.type === 'tool_result') {
      if (role === 'user') out.push(...userToolResult(b, at));
      else if (b.content === undefined || b.content === null || b.content === '')
        parts.push({ type: 'text', text: 'Tool result: ' });
      // Python's str() of a list of blocks is its repr: not reproduced.
      else if (typeof b.content === 'string') parts.push({ type: 'text', text: `Tool result: ${b.content}` });
      else throw unconvertible(`${at}: an assistant's structured tool_result is not reproduced`, at);
    } else if (b.type !== 'redacted_thinking' && b.type !== 'tool_reference')
      throw unconvertible(`${at}: block type ${JSON.stringify(b.type)} is not reproduced`, at);
  });
  if (reasoning.length > 0) message.reasoning = reasoning.join('');
  if (toolCalls.length > 0) message.tool_calls = toolCalls;
  if (parts.length === 1) message.content = parts[0]!.text;
  else if (parts.length > 1) message.content = parts;
  if (role === 'user' && !('content' in message)) return;
  out.push(message);
}

/**
 * `_convert_tools`: `{type: "function", function: {name, description,
 * parameters: input_schema, defer_loading}}`, the schema given `type:
 * "object"` (last) when it has none.
 */
function convertTool(t: unknown, i: number): Obj {
  if (!isObj(t) || typeof t.name !== 'string' || !isObj(t.input_schema))
    throw unconvertible(`tools[${i}] must have a name and an input_schema object`, `tools[${i}]`);
  const parameters = 'type' in t.input_schema ? t.input_schema : { ...t.input_schema, type: 'object' };
  const fn: Obj = { name: t.name, description: t.description ?? null, parameters };
  if (t.defer_loading !== undefined && t.defer_loading !== null) fn.defer_loading = t.defer_loading;
  return { type: 'function', function: fn };
}

/** vLLM's Anthropic conversion: system first, then each message, tools as function tools, chat_template_kwargs kept. */
export function anthropicToChat(body: Obj): ChatShape {
  if (!Array.isArray(body.messages) || body.messages.length === 0)
    throw unconvertible(`'messages' must be a non-empty list`, 'messages');
  const source = body.messages as unknown[];
  const messages: Obj[] = [];
  const system = systemMessage(body, source);
  if (system) messages.push(system);
  source.forEach((m, i) => {
    const role = roleOf(m, i);
    if (role !== 'system') convertMessage(m as Obj, role, i, messages);
  });
  const tools = Array.isArray(body.tools) ? body.tools.map(convertTool) : undefined;
  const kwargs = isObj(body.chat_template_kwargs) ? body.chat_template_kwargs : undefined;
  return { messages, tools, templateKwargs: kwargs };
}
