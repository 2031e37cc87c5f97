import type { ServerResponse } from 'node:http';

/** OpenAI's error `type` values that the gateway itself produces. */
export type ErrorType =
  | 'invalid_request_error'
  | 'not_found_error'
  | 'service_unavailable'
  | 'upstream_error'
  | 'authentication_error'
  | 'permission_error';

/**
 * An error the gateway answers itself, with an OpenAI-style body
 * `{"error": {"message", "type", "param", "code"}}` so OpenAI clients surface it as usual.
 * `retryable` says whether the same request may succeed later (503, upstream failures).
 */
export class GatewayError extends Error {
  override name = 'GatewayError';
  constructor(
    readonly status: number,
    message: string,
    readonly type: ErrorType,
    readonly code: string | null = null,
    readonly param: string | null = null,
    readonly retryable = false,
  ) {
    super(clip(message));
  }

  toJSON(): { error: { message: string; type: string; param: string | null; code: string | number | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/**
 * Messages may quote client input (a path, a JSON parser's excerpt): clipped, so an
 * error never mirrors a 16 KiB header or a megabyte of body back at the client or the logs.
 */
const MAX_MESSAGE_CHARS = 512;
function clip(message: string): string {
  return message.length > MAX_MESSAGE_CHARS ? `${message.slice(0, MAX_MESSAGE_CHARS)}...` : message;
}

export const badRequest = (message: string, param: string | null = null, code: string | null = null) =>
  new GatewayError(400, message, 'invalid_request_error', code, param);

/** Writes a GatewayError as JSON, unless a response is already under way (then the socket is cut). */
export function sendError(res: ServerResponse, err: GatewayError, extraHeaders?: Record<string, string>): void {
  if (res.headersSent) {
    res.destroy(err);
    return;
  }
  const body = JSON.stringify(err.toJSON());
  res.writeHead(err.status, {
    ...extraHeaders,
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}
