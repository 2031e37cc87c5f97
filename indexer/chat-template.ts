import { Template } from '@huggingface/jinja';

/** An OpenAI-style chat message as it arrives in a request body. */
export interface ChatMessage {
  role: string;
  content?: unknown;
  [key: string]: unknown;
}

export interface ChatRenderOptions {
  tools?: unknown[];
  addGenerationPrompt?: boolean;
  /** Extra variables passed to the template, as vLLM's `chat_template_kwargs`. */
  templateKwargs?: Record<string, unknown>;
}

/**
 * Renders chat messages with the model's own Jinja chat template, the way vLLM's
 * `apply_hf_chat_template` does: the special-token strings from tokenizer_config.json
 * are in scope, `add_generation_prompt` defaults to true.
 */
export class ChatTemplate {
  readonly #template: Template;
  readonly #specials: Record<string, string | null>;

  constructor(source: string, specials: Record<string, string | null>) {
    this.#template = new Template(source);
    this.#specials = specials;
  }

  render(messages: ChatMessage[], options: ChatRenderOptions = {}): string {
    return this.#template.render({
      ...this.#specials,
      ...options.templateKwargs,
      messages: messages.map(normalizeContent),
      tools: options.tools && options.tools.length > 0 ? options.tools : undefined,
      add_generation_prompt: options.addGenerationPrompt ?? true,
    });
  }
}

/**
 * vLLM flattens list-of-parts content to its text parts before rendering a
 * string-content template; non-text parts (images, audio) do not become tokens here.
 */
function normalizeContent(message: ChatMessage): ChatMessage {
  if (!Array.isArray(message.content)) return message;
  const text = message.content
    .map((part) => (part && typeof part === 'object' && (part as { type?: unknown }).type === 'text' ? String((part as { text?: unknown }).text ?? '') : ''))
    .filter((s) => s.length > 0)
    .join('\n');
  return { ...message, content: text };
}
