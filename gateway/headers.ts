import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';

/**
 * Hop-by-hop headers (RFC 9110 §7.6.1) apply to one connection only and must not be forwarded.
 * `host` is rewritten by the transport; `content-length` is set from the bytes we send.
 */
const REQUEST_DROP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'trailer', 'transfer-encoding', 'upgrade', 'host', 'content-length', 'expect',
]);
const RESPONSE_DROP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'trailer', 'transfer-encoding', 'upgrade',
]);

/** Also drops any header named in `Connection: a, b` (RFC 9110 §7.6.1). */
function connectionListed(headers: IncomingHttpHeaders): Set<string> | undefined {
  const c = headers.connection;
  if (c === undefined || c === 'keep-alive' || c === 'close') return undefined;
  return new Set(String(c).toLowerCase().split(',').map((s) => s.trim()));
}

/** Headers to send upstream for a client request, with the request id set. */
export function upstreamRequestHeaders(headers: IncomingHttpHeaders, requestId: string, contentLength: number): Record<string, string | string[]> {
  const listed = connectionListed(headers);
  const out: Record<string, string | string[]> = {};
  for (const name in headers) {
    if (REQUEST_DROP.has(name) || listed?.has(name)) continue;
    const value = headers[name];
    if (value !== undefined) out[name] = value;
  }
  out['x-request-id'] = requestId;
  out['content-length'] = String(contentLength);
  return out;
}

/** Headers to send the client for an upstream response, plus the gateway's own. */
export function clientResponseHeaders(
  headers: IncomingHttpHeaders,
  extra: Record<string, string>,
): OutgoingHttpHeaders {
  const listed = connectionListed(headers);
  const out: OutgoingHttpHeaders = {};
  for (const name in headers) {
    if (RESPONSE_DROP.has(name) || listed?.has(name)) continue;
    const value = headers[name];
    if (value !== undefined) out[name] = value;
  }
  for (const name in extra) out[name] = extra[name];
  return out;
}
