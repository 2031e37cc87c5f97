import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';

/**
 * Hop-by-hop headers (RFC 9110 §7.6.1) apply to one connection only and must not be forwarded.
 * `host` is rewritten by the transport; `content-length` is set from the bytes we send.
 * `x-kvgate-admin-token` is the gateway's own secret and never leaves it.
 */
const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
];
const REQUEST_DROP = new Set([...HOP_BY_HOP, 'host', 'content-length', 'expect', 'x-kvgate-admin-token']);
const RESPONSE_DROP = new Set(HOP_BY_HOP);

/** Headers a proxy must drop from a message with these headers: the hop-by-hop set plus any named in `Connection`. */
export function hopByHop(headers: IncomingHttpHeaders, response: boolean): (name: string) => boolean {
  const listed = connectionListed(headers);
  const fixed = response ? RESPONSE_DROP : REQUEST_DROP;
  return (name) => fixed.has(name) || (listed?.has(name) ?? false);
}

/** Also drops any header named in `Connection: a, b` (RFC 9110 §7.6.1). */
function connectionListed(headers: IncomingHttpHeaders): Set<string> | undefined {
  const c = headers.connection;
  if (c === undefined || c === 'keep-alive' || c === 'close') return undefined;
  return new Set(
    String(c)
      .toLowerCase()
      .split(',')
      .map((s) => s.trim()),
  );
}

export interface UpstreamHeaderOptions {
  /** The client's socket address: appended to `x-forwarded-for`. */
  readonly clientAddress?: string | undefined;
  /** Forward the client's `Authorization` (off unless `upstream.passClientAuthorization`). */
  readonly passAuthorization?: boolean | undefined;
}

/**
 * Headers to send upstream for a client request, with the request id set.
 * The client's `Authorization` is dropped unless asked for: it is the client's
 * credential towards the gateway, not the worker's API key (see gateway/proxy/upstream-auth.ts).
 */
export function upstreamRequestHeaders(
  headers: IncomingHttpHeaders,
  requestId: string,
  contentLength: number,
  options: UpstreamHeaderOptions = {},
): Record<string, string | string[]> {
  const drop = hopByHop(headers, false);
  const out: Record<string, string | string[]> = {};
  for (const name in headers) {
    if (drop(name) || (name === 'authorization' && options.passAuthorization !== true)) continue;
    const value = headers[name];
    if (value !== undefined) out[name] = value;
  }
  Object.assign(out, forwardedHeaders(headers, options.clientAddress));
  out['x-request-id'] = requestId;
  out['content-length'] = String(contentLength);
  return out;
}

const joined = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v.join(', ') : v);
const append = (prior: string | string[] | undefined, value: string): string => {
  const p = joined(prior);
  return p === undefined || p === '' ? value : `${p}, ${value}`;
};

/**
 * `x-forwarded-for`, `-proto` and `-host` for the upstream: whatever the client
 * claimed stays (the worker may log it) but our own observation is appended last,
 * where a reader that trusts only its nearest proxy looks. The front speaks plain HTTP.
 */
export function forwardedHeaders(
  headers: IncomingHttpHeaders,
  clientAddress: string | undefined,
): Record<string, string> {
  const out: Record<string, string> = {
    'x-forwarded-for': append(headers['x-forwarded-for'], clientAddress ?? 'unknown'),
    'x-forwarded-proto': append(headers['x-forwarded-proto'], 'http'),
  };
  const host = headers.host;
  if (host !== undefined && host !== '') out['x-forwarded-host'] = append(headers['x-forwarded-host'], host);
  else if (headers['x-forwarded-host'] !== undefined) out['x-forwarded-host'] = joined(headers['x-forwarded-host'])!;
  return out;
}

/** Headers to send the client for an upstream response, plus the gateway's own. */
export function clientResponseHeaders(
  headers: IncomingHttpHeaders,
  extra: Record<string, string>,
): OutgoingHttpHeaders {
  const drop = hopByHop(headers, true);
  const out: OutgoingHttpHeaders = {};
  for (const name in headers) {
    if (drop(name)) continue;
    const value = headers[name];
    if (value !== undefined) out[name] = value;
  }
  for (const name in extra) out[name] = extra[name];
  return out;
}

/** Visible ASCII, no spaces, at most 128 characters: enough for UUIDs, trace ids and vLLM's request ids. */
const REQUEST_ID = /^[\x21-\x7e]{1,128}$/;

/**
 * The client's `x-request-id`, when it is a sane token; otherwise undefined and
 * the gateway makes one. It is echoed in headers and written to every log line
 * of the request, so a 16 KiB or odd value is not taken over.
 */
export function clientRequestId(headers: IncomingHttpHeaders): string | undefined {
  const given = headers['x-request-id'];
  return typeof given === 'string' && REQUEST_ID.test(given) ? given : undefined;
}
