/** Bytes of the previous chunk kept, so a pattern split across two chunks is still seen. */
const CARRY = 256;
const FINISH = /"finish_reason"\s*:\s*"tool_calls"/;
const NAME = /"function"\s*:\s*\{\s*"name"\s*:\s*"([^"\\]{1,128})"/g;
/** Tool names kept per response at most. */
const MAX_NAMES = 8;

/**
 * Sees whether a chat response (JSON or SSE, in chunks) ends in tool calls and
 * which functions it calls, without buffering the body: each chunk is scanned
 * with the tail of the one before. Generated text is JSON-escaped, so it
 * cannot fake `"finish_reason":"tool_calls"`.
 */
export class ToolCallSniffer {
  toolCalls = false;
  readonly names: string[] = [];
  #tail = '';

  scan(chunk: Buffer): void {
    const text = this.#tail + chunk.toString('latin1');
    if (!this.toolCalls && FINISH.test(text)) this.toolCalls = true;
    if (this.names.length < MAX_NAMES && text.includes('"name"')) {
      for (const m of text.matchAll(NAME)) {
        const name = m[1]!;
        if (!this.names.includes(name) && this.names.length < MAX_NAMES) this.names.push(name);
      }
    }
    this.#tail = text.length > CARRY ? text.slice(text.length - CARRY) : text;
  }
}
