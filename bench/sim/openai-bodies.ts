import { randomHex, type OpenAiContext } from './openai.js';

// The response bodies and stream chunks the simulator answers with, in vLLM's shapes.

export interface Usage {
  prompt_tokens: number;
  total_tokens: number;
  completion_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

export function usage(promptTokens: number, completionTokens: number, cachedTokens: number): Usage {
  return {
    prompt_tokens: promptTokens,
    total_tokens: promptTokens + completionTokens,
    completion_tokens: completionTokens,
    prompt_tokens_details: { cached_tokens: Math.max(0, cachedTokens) },
  };
}

/** Identity of one response: every chunk of a stream repeats it. */
export interface ResponseHead {
  id: string;
  created: number;
  model: string;
}

export function completionChunk(h: ResponseHead, text: string, finish: string | null): unknown {
  return {
    id: h.id,
    object: 'text_completion',
    created: h.created,
    model: h.model,
    choices: [{ index: 0, text, logprobs: null, finish_reason: finish, stop_reason: null }],
  };
}

export function chatChunk(h: ResponseHead, delta: Record<string, unknown>, finish: string | null): unknown {
  return {
    id: h.id,
    object: 'chat.completion.chunk',
    created: h.created,
    model: h.model,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
  };
}

export function usageChunk(kind: 'completion' | 'chat', h: ResponseHead, u: Usage): unknown {
  return {
    id: h.id,
    object: kind === 'chat' ? 'chat.completion.chunk' : 'text_completion',
    created: h.created,
    model: h.model,
    choices: [],
    usage: u,
  };
}

/** `kvTransferParams`: set by a prefill run for a remote decode (NixlConnector), else null as vLLM sends. */
export function completionBody(
  h: ResponseHead,
  text: string,
  finish: string,
  u: Usage,
  kvTransferParams: Record<string, unknown> | null = null,
): unknown {
  return {
    id: h.id,
    object: 'text_completion',
    created: h.created,
    model: h.model,
    choices: [{ index: 0, text, logprobs: null, finish_reason: finish, stop_reason: null, prompt_logprobs: null }],
    usage: u,
    system_fingerprint: null,
    kv_transfer_params: kvTransferParams,
  };
}

export function chatBody(
  h: ResponseHead,
  text: string,
  finish: string,
  u: Usage,
  kvTransferParams: Record<string, unknown> | null = null,
): unknown {
  return {
    id: h.id,
    object: 'chat.completion',
    created: h.created,
    model: h.model,
    choices: [
      {
        index: 0,
        message: {
          role: 'assistant',
          content: text,
          refusal: null,
          annotations: null,
          audio: null,
          function_call: null,
          tool_calls: [],
          reasoning_content: null,
        },
        logprobs: null,
        finish_reason: finish,
        stop_reason: null,
      },
    ],
    service_tier: null,
    system_fingerprint: null,
    usage: u,
    prompt_logprobs: null,
    kv_transfer_params: kvTransferParams,
  };
}

export function modelCard(ctx: OpenAiContext, created: number): unknown {
  return {
    object: 'list',
    data: [...baseCard(ctx, created), ...ctx.loras.cards(ctx.model, created)],
  };
}

function baseCard(ctx: OpenAiContext, created: number): Record<string, unknown>[] {
  return [
    {
      id: ctx.model,
      object: 'model',
      created,
      owned_by: 'vllm',
      root: ctx.model,
      parent: null,
      max_model_len: ctx.maxModelLen,
      permission: [
        {
          id: `modelperm-${randomHex(16)}`,
          object: 'model_permission',
          created,
          allow_create_engine: false,
          allow_sampling: true,
          allow_logprobs: true,
          allow_search_indices: false,
          allow_view: true,
          allow_fine_tuning: false,
          organization: '*',
          group: null,
          is_blocking: false,
        },
      ],
    },
  ];
}
