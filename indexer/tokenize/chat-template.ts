import { Template } from '@huggingface/jinja';
import { IncrementalRenderer } from './incremental-render.js';

/** An OpenAI-style chat message as it arrives in a request body. */
export interface ChatMessage {
  role: string;
  content?: unknown;
  [key: string]: unknown;
}

export interface ChatRenderOptions {
  /** OpenAI `tools` of the request, as sent (normalised here the way vLLM's pydantic models dump them). */
  tools?: unknown[] | null | undefined;
  /** Defaults to true, as in vLLM's chat and /tokenize requests. */
  addGenerationPrompt?: boolean | undefined;
  continueFinalMessage?: boolean | undefined;
  documents?: unknown[] | null | undefined;
  /** The request's `chat_template_kwargs`, passed to the template as variables (they may override the above, as in vLLM). */
  templateKwargs?: Record<string, unknown> | undefined;
}

/**
 * The request holds something we cannot turn into the engine's exact prompt
 * (media parts, malformed messages). The caller routes without blocks; the
 * engine will accept or reject the request on its own terms.
 */
export class UnsupportedPromptError extends Error {
  override name = 'UnsupportedPromptError';
}

const TEXT_PARTS: Record<string, string> = {
  text: 'text',
  input_text: 'text',
  output_text: 'text',
  refusal: 'refusal',
  thinking: 'thinking',
};
export const MEDIA_TYPES: ReadonlySet<string> = new Set([
  'image_url',
  'input_image',
  'image_pil',
  'image_embeds',
  'audio_embeds',
  'prompt_embeds',
  'audio_url',
  'input_audio',
  'video_url',
]);
// Variables vLLM refuses in chat_template_kwargs; `messages` would clash with the conversation.
const RESERVED_KWARGS = new Set(['chat_template', 'tokenize', 'messages']);

/**
 * Renders chat messages with the model's own Jinja chat template the way vLLM
 * does (`parse_chat_messages` then transformers' `apply_chat_template`): the
 * messages are normalised first (content parts joined, tool-call arguments
 * parsed to objects, tools dumped with their defaults), the tokenizer's special
 * tokens are in scope, and `continue_final_message` trims after the last message.
 */
export class ChatTemplate {
  readonly #template: Template;
  readonly #specials: Record<string, unknown>;
  readonly #incremental: IncrementalRenderer | undefined;

  /** `specials`: special-token variables as transformers exposes them; absent tokens are left out, not null, so `{{ bos_token }}` renders "" as in Python. */
  constructor(source: string, specials: Record<string, unknown>) {
    this.#template = new Template(source);
    usePythonStrip(this.#template.parsed);
    this.#specials = specials;
    this.#incremental = IncrementalRenderer.for(this.#template.parsed);
  }

  /** True when turns are rendered message by message from a cache (see incremental-render.ts). */
  get incremental(): boolean {
    return this.#incremental !== undefined;
  }

  /** Empties the per-message render cache. */
  clearCache(): void {
    this.#incremental?.clear();
  }

  /** The whole render, bypassing the per-message cache: the reference the incremental render must equal. */
  renderWhole(messages: readonly unknown[], options: ChatRenderOptions = {}): string {
    return this.#render(messages, options, false);
  }

  render(messages: readonly unknown[], options: ChatRenderOptions = {}): string {
    return this.#render(messages, options, true);
  }

  #render(messages: readonly unknown[], options: ChatRenderOptions, incremental: boolean): string {
    const conversation = toConversation(messages);
    const vars: Record<string, unknown> = {
      ...this.#specials,
      tools: options.tools === undefined || options.tools === null ? null : toToolDicts(options.tools),
      documents: options.documents ?? null,
      add_generation_prompt: options.addGenerationPrompt ?? true,
      continue_final_message: options.continueFinalMessage ?? false,
    };
    for (const [key, value] of Object.entries(options.templateKwargs ?? {}))
      if (!RESERVED_KWARGS.has(key)) vars[key] = value;
    if (vars.add_generation_prompt === true && vars.continue_final_message === true) {
      throw new UnsupportedPromptError('add_generation_prompt and continue_final_message cannot both be true');
    }
    const items = { ...vars, ...PY_STRIP_FUNCTIONS, messages: conversation };
    const rendered = (incremental ? this.#incremental?.render(items) : undefined) ?? this.#template.render(items);
    return vars.continue_final_message === true ? trimAfterFinalMessage(rendered, conversation) : rendered;
  }
}

/**
 * vLLM's message normalisation for string-content templates: content becomes
 * one string (text parts joined with "\n", empty parts dropped, null -> ""),
 * only the fields vLLM forwards are kept, and assistant tool-call arguments
 * given as JSON strings become objects (invalid JSON -> {}), because templates
 * render them with `tojson`.
 */
export function toConversation(messages: readonly unknown[]): ChatMessage[] {
  return messages.map((raw, index) => {
    if (!isObject(raw) || typeof raw.role !== 'string')
      throw new UnsupportedPromptError(`messages[${index}] has no string role`);
    const out: ChatMessage = { role: raw.role, content: flattenContent(raw.content, index) };
    if (raw.role === 'assistant') {
      if (Array.isArray(raw.tool_calls)) {
        if (raw.tool_calls.length > 0)
          out.tool_calls = raw.tool_calls.map((call, i) => normalizeToolCall(call, index, i));
      } else if (raw.tool_calls !== undefined && raw.tool_calls !== null) {
        out.tool_calls = raw.tool_calls;
      }
      // Newer vLLM reads `reasoning`; older clients send `reasoning_content`. Both names reach the template.
      const reasoning = raw.reasoning ?? raw.reasoning_content;
      if (reasoning !== undefined && reasoning !== null) {
        out.reasoning = reasoning;
        out.reasoning_content = reasoning;
      }
    } else if (raw.role === 'tool' && 'tool_call_id' in raw) {
      out.tool_call_id = raw.tool_call_id;
    } else if (raw.role === 'developer') {
      out.tools = raw.tools ?? null;
    }
    if (typeof raw.name === 'string') out.name = raw.name;
    if (typeof raw.task === 'string') out.task = raw.task;
    return out;
  });
}

function flattenContent(content: unknown, index: number): string {
  if (content === undefined || content === null) return '';
  if (typeof content === 'string') return content;
  if (!Array.isArray(content))
    throw new UnsupportedPromptError(`messages[${index}].content must be a string or a list of parts`);
  const texts: string[] = [];
  for (const part of content) {
    const text = partText(part, index);
    // vLLM keeps a part only when its text is truthy: empty strings vanish from the join.
    if (text) texts.push(text);
  }
  return texts.join('\n');
}

function partText(part: unknown, index: number): string | undefined {
  if (typeof part === 'string') return part;
  if (!isObject(part)) throw new UnsupportedPromptError(`messages[${index}].content has a part that is not an object`);
  const type = part.type;
  if (typeof type === 'string' && type in TEXT_PARTS) {
    const value = part[TEXT_PARTS[type]!];
    if (value === undefined || value === null) return undefined;
    if (typeof value !== 'string')
      throw new UnsupportedPromptError(`messages[${index}].content has a ${type} part whose text is not a string`);
    return value;
  }
  if (type === 'tool_reference' && typeof part.name === 'string') return part.name;
  if (MEDIA_TYPES.has(String(type)) || (type === undefined && [...MEDIA_TYPES].some((key) => key in part))) {
    // Media become model-specific placeholder tokens inside the engine; their count is not ours to guess.
    throw new UnsupportedPromptError(
      `messages[${index}].content has a ${String(type ?? 'media')} part; its tokens cannot be reproduced`,
    );
  }
  throw new UnsupportedPromptError(`messages[${index}].content has an unsupported part type '${String(type)}'`);
}

function normalizeToolCall(call: unknown, index: number, i: number): unknown {
  if (!isObject(call) || !isObject(call.function))
    throw new UnsupportedPromptError(`messages[${index}].tool_calls[${i}] has no function`);
  const args = call.function.arguments;
  let parsed: unknown = args;
  if (typeof args === 'string') {
    try {
      parsed = JSON.parse(args);
    } catch {
      parsed = {};
    }
  } else if (!isObject(args) && !Array.isArray(args)) {
    parsed = {};
  }
  return { ...call, function: { ...call.function, arguments: parsed } };
}

/**
 * vLLM validates `tools` into pydantic models and hands the template their
 * `model_dump()`: declared fields first with their defaults (`description` and
 * `parameters` become null when absent), unknown fields kept after them. The
 * template prints these with `tojson`, so the order and the nulls are tokens.
 */
export function toToolDicts(tools: readonly unknown[]): unknown[] {
  return tools.map((tool, i) => {
    if (!isObject(tool) || !isObject(tool.function) || typeof tool.function.name !== 'string') {
      throw new UnsupportedPromptError(`tools[${i}] must be {type: "function", function: {name, ...}}`);
    }
    if (tool.type !== undefined && tool.type !== 'function')
      throw new UnsupportedPromptError(`tools[${i}].type must be "function"`);
    const { name, description, parameters, defer_loading, ...fnExtra } = tool.function;
    const fn: Record<string, unknown> = { name, description: description ?? null, parameters: parameters ?? null };
    if (defer_loading !== undefined && defer_loading !== null) fn.defer_loading = defer_loading;
    const { type: _type, function: _fn, ...toolExtra } = tool;
    return { type: 'function', function: { ...fn, ...fnExtra }, ...toolExtra };
  });
}

/** transformers' `continue_final_message`: cut the rendered text right after the final message's content. */
function trimAfterFinalMessage(rendered: string, conversation: ChatMessage[]): string {
  const last = conversation[conversation.length - 1];
  const finalMessage = typeof last?.content === 'string' ? last.content : '';
  const stripped = pyStrip(finalMessage);
  const at = rendered.lastIndexOf(stripped);
  if (at < 0)
    throw new UnsupportedPromptError(
      'continue_final_message is set but the final message does not appear in the rendered chat',
    );
  const lstrippedLength = pyLstrip(finalMessage).length;
  if (rendered.slice(at, at + lstrippedLength) === finalMessage) return rendered.slice(0, at + lstrippedLength);
  return rendered.slice(0, at + stripped.length);
}

/**
 * @huggingface/jinja 0.5's string methods `strip`/`lstrip`/`rstrip` ignore their
 * argument and trim all whitespace, so Qwen3's `content.lstrip('\n')` would also
 * eat spaces and tabs that Python keeps. We rewrite those calls in the parsed
 * template into calls of our own Python-exact functions (this template only).
 */
function usePythonStrip(node: unknown): void {
  if (!node || typeof node !== 'object') return;
  if (Array.isArray(node)) {
    for (const child of node) usePythonStrip(child);
    return;
  }
  const n = node as {
    type?: unknown;
    callee?: { type?: unknown; computed?: unknown; object?: unknown; property?: { type?: unknown; value?: unknown } };
    args?: unknown[];
  };
  if (
    n.type === 'CallExpression' &&
    n.callee?.type === 'MemberExpression' &&
    !n.callee.computed &&
    n.callee.property?.type === 'Identifier'
  ) {
    const method = n.callee.property.value;
    if (method === 'strip' || method === 'lstrip' || method === 'rstrip') {
      const Identifier = n.callee.property.constructor as new (value: string) => unknown;
      n.args = [n.callee.object, ...(n.args ?? [])];
      n.callee = new Identifier(`__kvgate_py_${method}`) as NonNullable<typeof n.callee>;
    }
  }
  for (const value of Object.values(node)) if (value && typeof value === 'object') usePythonStrip(value);
}

function pyStripChars(value: unknown, chars: unknown, left: boolean, right: boolean): string {
  if (typeof value !== 'string') throw new Error('strip() called on a value that is not a string');
  if (chars === undefined || chars === null) {
    let out = left ? value.replace(PY_LEADING, '') : value;
    if (right) out = out.replace(PY_TRAILING, '');
    return out;
  }
  if (typeof chars !== 'string') throw new Error('strip() argument must be a string');
  const set = new Set(chars);
  const cps = Array.from(value);
  let start = 0;
  let end = cps.length;
  if (left) while (start < end && set.has(cps[start]!)) start++;
  if (right) while (end > start && set.has(cps[end - 1]!)) end--;
  return cps.slice(start, end).join('');
}

const PY_STRIP_FUNCTIONS = {
  __kvgate_py_strip: (value: unknown, chars?: unknown) => pyStripChars(value, chars, true, true),
  __kvgate_py_lstrip: (value: unknown, chars?: unknown) => pyStripChars(value, chars, true, false),
  __kvgate_py_rstrip: (value: unknown, chars?: unknown) => pyStripChars(value, chars, false, true),
};

// Python's str.isspace() set, which differs from JS trim() (\x1c-\x1f and \x85 yes, \ufeff no).
const PY_SPACE = '[\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]';
const PY_LEADING = new RegExp(`^${PY_SPACE}+`);
const PY_TRAILING = new RegExp(`${PY_SPACE}+$`);

function pyLstrip(s: string): string {
  return s.replace(PY_LEADING, '');
}

function pyStrip(s: string): string {
  return pyLstrip(s).replace(PY_TRAILING, '');
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
