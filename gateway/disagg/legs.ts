import type { IncomingHttpHeaders, ServerResponse } from 'node:http';
import type { Pool } from 'undici';
import { GatewayError } from '../front/errors.js';
import { clientResponseHeaders } from '../proxy/headers.js';
import { failureKind, retryableStatus, type FailureKind } from '../proxy/retry.js';
import { SseFramer } from '../proxy/sse-framer.js';

/** Fields a prefill leg must not carry: it returns one token, as one JSON body. */
const PREFILL_DROP = ['stream_options', 'min_tokens', 'min_completion_tokens'];

/** What the proxy asks of the prefill engine (vLLM's toy_proxy_server.py): prefill, keep the KV, tell us where it is. */
export const PREFILL_KV_TRANSFER_PARAMS = Object.freeze({
  do_remote_decode: true,
  do_remote_prefill: false,
  remote_engine_id: null,
  remote_block_ids: null,
  remote_host: null,
  remote_port: null,
});

/** The prefill leg's body: the request with stream off, one output token, and the transfer request. */
export function prefillBody(body: Record<string, unknown>): Buffer {
  const out: Record<string, unknown> = {
    ...body,
    stream: false,
    max_tokens: 1,
    kv_transfer_params: PREFILL_KV_TRANSFER_PARAMS,
  };
  if ('max_completion_tokens' in body) out.max_completion_tokens = 1;
  for (const k of PREFILL_DROP) delete out[k];
  return Buffer.from(JSON.stringify(out));
}

/** The decode leg's body: the original request, streaming as the client asked, plus the prefill engine's params. */
export function decodeBody(body: Record<string, unknown>, kvTransferParams: Record<string, unknown>): Buffer {
  return Buffer.from(JSON.stringify({ ...body, kv_transfer_params: kvTransferParams }));
}

export type PrefillResult =
  | { ok: true; params: Record<string, unknown> }
  /** The engine refused the request itself (4xx): the same request would fail anywhere; passed to the client. */
  | { ok: false; final: true; status: number; headers: IncomingHttpHeaders; body: Buffer }
  | { ok: false; final: false; kind: FailureKind | 'no_params' | 'client_abort'; message: string };

/** Sends the prefill leg and reads `kv_transfer_params` from its JSON answer. */
export async function sendPrefill(
  pool: Pool,
  path: string,
  headers: Record<string, string | string[]>,
  body: Buffer,
  signal: AbortSignal,
): Promise<PrefillResult> {
  let res;
  try {
    res = await pool.request({
      path,
      method: 'POST',
      headers: { ...headers, 'content-length': String(body.length) },
      body,
      signal,
    });
  } catch (err) {
    if (signal.aborted) return { ok: false, final: false, kind: 'client_abort', message: 'client disconnected' };
    return { ok: false, final: false, kind: failureKind(err as Error), message: (err as Error).message };
  }
  let text: Buffer;
  try {
    text = Buffer.from(await res.body.arrayBuffer());
  } catch (err) {
    if (signal.aborted) return { ok: false, final: false, kind: 'client_abort', message: 'client disconnected' };
    return { ok: false, final: false, kind: failureKind(err as Error), message: (err as Error).message };
  }
  if (res.statusCode >= 400 && res.statusCode < 500)
    return { ok: false, final: true, status: res.statusCode, headers: res.headers, body: text };
  if (res.statusCode !== 200) return { ok: false, final: false, kind: 'status', message: `status ${res.statusCode}` };
  let params: unknown;
  try {
    params = (JSON.parse(text.toString('utf8')) as { kv_transfer_params?: unknown }).kv_transfer_params;
  } catch {
    return { ok: false, final: false, kind: 'other', message: 'prefill response is not JSON' };
  }
  if (params === null || typeof params !== 'object' || Array.isArray(params)) {
    return {
      ok: false,
      final: false,
      kind: 'no_params',
      message:
        'prefill response has no kv_transfer_params (is the engine started with a KV connector such as NixlConnector?)',
    };
  }
  return { ok: true, params: params as Record<string, unknown> };
}

export interface StreamHooks {
  /** The first body byte went to the client. */
  first(): void;
  data(chunk: Buffer): void;
}

export type StreamResult =
  /** Nothing reached the client; `retryable` when another worker may succeed. */
  | { committed: false; retryable: boolean; kind: FailureKind | 'client_abort'; message: string }
  /** The response went to the client: `status` 499 when the client left, 502 when the upstream broke mid-body. */
  | { committed: true; status: number; kind?: FailureKind | 'client_abort' };

/**
 * Streams one upstream response to the client, honouring back-pressure. The
 * head goes out with the upstream's; a 502/503 head is not passed on when a
 * retry is possible. A body broken mid-way ends an SSE stream with an
 * OpenAI-style error event (no `[DONE]`), and cuts any other body.
 */
export async function streamLeg(
  pool: Pool,
  path: string,
  headers: Record<string, string | string[]>,
  body: Buffer,
  res: ServerResponse,
  extraHeaders: Record<string, string>,
  signal: AbortSignal,
  canRetry: boolean,
  hooks: StreamHooks,
): Promise<StreamResult> {
  let up;
  try {
    up = await pool.request({
      path,
      method: 'POST',
      headers: { ...headers, 'content-length': String(body.length) },
      body,
      signal,
    });
  } catch (err) {
    if (signal.aborted)
      return { committed: false, retryable: false, kind: 'client_abort', message: 'client disconnected' };
    return { committed: false, retryable: true, kind: failureKind(err as Error), message: (err as Error).message };
  }
  if (canRetry && retryableStatus(up.statusCode)) {
    await up.body.dump().catch(() => {});
    return { committed: false, retryable: true, kind: 'status', message: `status ${up.statusCode}` };
  }
  if (res.destroyed) {
    up.body.destroy();
    return { committed: false, retryable: false, kind: 'client_abort', message: 'client disconnected' };
  }
  const sse = String(up.headers['content-type'] ?? '').startsWith('text/event-stream') ? new SseFramer() : undefined;
  res.writeHead(up.statusCode, clientResponseHeaders(up.headers, extraHeaders));
  let first = true;
  try {
    for await (const chunk of up.body as AsyncIterable<Buffer>) {
      if (first) hooks.first();
      first = false;
      hooks.data(chunk);
      const out = sse ? sse.push(chunk) : chunk;
      if (out.length > 0 && !res.write(out)) await drained(res);
      if (res.destroyed) throw new Error('client disconnected');
    }
    const rest = sse?.flush();
    if (rest && rest.length > 0) res.write(rest);
    res.end();
    return { committed: true, status: up.statusCode };
  } catch (err) {
    if (signal.aborted || res.destroyed) return { committed: true, status: 499, kind: 'client_abort' };
    const kind = failureKind(err as Error);
    const e = new GatewayError(
      502,
      `upstream worker failed mid-response: ${(err as Error).message}`,
      'upstream_error',
      `upstream_${kind}`,
      null,
      true,
    );
    if (sse) res.end(sse.errorEvent(JSON.stringify(e.toJSON())));
    else res.destroy(e);
    return { committed: true, status: 502, kind };
  }
}

function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.once('drain', done);
    res.once('close', done);
  });
}
