import { ContextLengthError } from '../../indexer/tokenize/context-bound.js';
import { GatewayError } from './errors.js';

/**
 * An error the gateway answers for the engine, because it already knows the engine's
 * answer and getting it would cost much (a prompt over the context length): in vLLM's
 * shape, `type: "BadRequestError"` and the status number as `code`, so a client that
 * handles vLLM's error handles this one alike.
 */
export class EngineShapedError extends GatewayError {
  override name = 'EngineShapedError';

  override toJSON(): { error: { message: string; type: string; param: string | null; code: number } } {
    return { error: { message: this.message, type: 'BadRequestError', param: this.param, code: this.status } };
  }
}

/** vLLM's context-length refusal; "at least" when counting stopped once the limit was certainly passed. */
export function contextLengthError(err: ContextLengthError): EngineShapedError {
  const has =
    err.unit === 'tokens'
      ? `${err.atLeast ? 'at least ' : ''}${err.count} input tokens`
      : `${err.count} input characters, more than ${err.limit} tokens can hold`;
  return new EngineShapedError(
    400,
    `This model's maximum context length is ${err.limit} tokens. However, your request has ${has}. Please reduce the length of the input messages.`,
    'invalid_request_error',
    'context_length_exceeded',
  );
}
