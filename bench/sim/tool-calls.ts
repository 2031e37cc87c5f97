import { randomHex } from './openai.js';

/**
 * The tool a chat request forces: `tool_choice` naming a function, or
 * "required" (the first tool). vLLM answers both with guided decoding into a
 * tool call and `finish_reason: "tool_calls"`; the simulator does the same
 * with empty arguments. null: an ordinary answer ("auto" stays text here).
 */
export function forcedTool(body: Record<string, unknown>): string | null {
  const tools = Array.isArray(body.tools) ? (body.tools as { function?: { name?: unknown } }[]) : [];
  const choice = body.tool_choice as { type?: unknown; function?: { name?: unknown } } | string | undefined;
  if (choice === 'required') {
    const name = tools[0]?.function?.name;
    return typeof name === 'string' ? name : null;
  }
  if (typeof choice === 'object' && choice !== null && typeof choice.function?.name === 'string')
    return choice.function.name;
  return null;
}

function call(name: string): Record<string, unknown> {
  return { id: `chatcmpl-tool-${randomHex(16)}`, type: 'function', function: { name, arguments: '{}' } };
}

/** Rewrites a non-streamed chat body into vLLM's tool-call answer. */
export function asToolCallBody(body: unknown, name: string): unknown {
  const b = body as { choices: { message: Record<string, unknown>; finish_reason: string }[] };
  const choice = b.choices[0]!;
  choice.message.content = null;
  choice.message.tool_calls = [call(name)];
  choice.finish_reason = 'tool_calls';
  return b;
}

/** The delta of the stream's closing chunk: the whole call at once. */
export function toolCallDelta(name: string): Record<string, unknown> {
  return { tool_calls: [{ index: 0, ...call(name) }] };
}
