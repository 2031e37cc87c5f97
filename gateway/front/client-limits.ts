import type { IncomingMessage, ServerOptions, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { GatewayError, sendError } from './errors.js';

/** The front listener's limits on what a client may send and how slowly (fields of `server` in the config). */
export interface ClientLimits {
  readonly keepAliveTimeoutMs: number;
  /** Time from connection (or the end of the previous request) to the last request header byte. */
  readonly headersTimeoutMs: number;
  /** Time to receive the whole request, body included; 0 disables it. Never cuts the response. */
  readonly requestTimeoutMs: number;
  /** Largest request head (request line plus headers); beyond it 431. */
  readonly maxHeaderBytes: number;
}

/**
 * node:http options for the front. Node checks the header and request timeouts
 * on a timer (`connectionsCheckingInterval`, 30 s by default); a short timeout
 * gets a proportionally short check so a slowloris client is cut off close to
 * its deadline. Node's `requestTimeout` stops counting once the request is
 * fully received, so a long streamed answer is not affected.
 */
export function frontServerOptions(limits: ClientLimits): ServerOptions {
  const timeouts = [limits.headersTimeoutMs, limits.requestTimeoutMs].filter((t) => t > 0);
  const check = Math.min(30_000, Math.max(50, Math.floor(Math.min(...timeouts, 120_000) / 4)));
  return {
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    // Node refuses a header timeout longer than the request timeout.
    headersTimeout:
      limits.requestTimeoutMs > 0
        ? Math.min(limits.headersTimeoutMs, limits.requestTimeoutMs)
        : limits.headersTimeoutMs,
    requestTimeout: limits.requestTimeoutMs,
    maxHeaderSize: limits.maxHeaderBytes,
    connectionsCheckingInterval: check,
    requireHostHeader: false,
  };
}

type ClientErr = Error & { code?: string };

/** Node's parser error codes mapped to our status and error code. */
function classify(err: ClientErr): GatewayError {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return new GatewayError(431, 'request headers too large', 'invalid_request_error', 'headers_too_large');
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new GatewayError(408, 'request not received in time', 'invalid_request_error', 'request_timeout');
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return new GatewayError(413, 'chunk extensions too large', 'invalid_request_error', 'request_too_large');
    default:
      // Parser messages name the fault ("Invalid header value char") without quoting the input.
      return new GatewayError(
        400,
        `malformed HTTP request: ${err.message}`,
        'invalid_request_error',
        'malformed_request',
      );
  }
}

/**
 * The front's `clientError` handler (bad request line or headers, oversized
 * head, header or request timeout): an OpenAI-style error and a closed
 * connection, as Node itself would answer but with a JSON body. Nothing is
 * written when the socket is gone or a response is already under way on it.
 */
export function answerClientError(err: Error, socket: Duplex): void {
  const e = err as ClientErr;
  const inFlight = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  if (e.code !== 'ECONNRESET' && socket.writable && !inFlight?.headersSent) {
    const g = classify(e);
    const body = JSON.stringify(g.toJSON());
    socket.end(
      `HTTP/1.1 ${g.status} ${STATUS_TEXT[g.status] ?? 'Error'}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
    // end() lets the answer flush; a client that keeps its side open is cut shortly after.
    setTimeout(() => socket.destroy(), 1000).unref();
    return;
  }
  socket.destroy();
}

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  408: 'Request Timeout',
  413: 'Payload Too Large',
  431: 'Request Header Fields Too Large',
};

/**
 * Node answers a hostless HTTP/1.1 request (RFC 9112 §3.2) with a bodiless 400
 * unless `requireHostHeader` is off; the front turns it off and answers here
 * instead, with an OpenAI-style body like every other refusal.
 */
export function requireHost(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    if (req.httpVersion === '1.1' && req.headers.host === undefined) {
      sendError(
        res,
        new GatewayError(400, 'HTTP/1.1 request without a Host header', 'invalid_request_error', 'malformed_request'),
        { connection: 'close' },
      );
      return;
    }
    handler(req, res);
  };
}

/** `checkExpectation`: an `Expect` other than 100-continue is 417, with a body (Node's own answer has none). */
export function answerExpectation(_req: IncomingMessage, res: ServerResponse): void {
  sendError(
    res,
    new GatewayError(417, 'only Expect: 100-continue is supported', 'invalid_request_error', 'expectation_failed'),
    { connection: 'close' },
  );
}
