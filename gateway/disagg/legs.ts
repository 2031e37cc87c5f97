import type { FailureKind } from '../proxy/retry.js';

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

/**
 * Reads `kv_transfer_params` from a prefill engine's JSON answer, or says why
 * this answer cannot start a decode leg (another prefill worker may do better).
 */
export function readPrefillParams(
  body: Buffer,
): { params: Record<string, unknown> } | { kind: FailureKind; message: string } {
  let params: unknown;
  try {
    params = (JSON.parse(body.toString('utf8')) as { kv_transfer_params?: unknown }).kv_transfer_params;
  } catch {
    return { kind: 'other', message: 'prefill response is not JSON' };
  }
  if (params === null || typeof params !== 'object' || Array.isArray(params)) {
    return {
      kind: 'no_params',
      message:
        'prefill response has no kv_transfer_params (is the engine started with a KV connector such as NixlConnector?)',
    };
  }
  return { params: params as Record<string, unknown> };
}
