import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { request } from 'undici';
import type { RemotePrefill } from './sim-request.js';

/**
 * The NixlConnector side of a simulated worker (vLLM's P/D disaggregation
 * through a proxy, docs/engine-wire-formats.md, P/D).
 *
 * Prefill side: a request with `kv_transfer_params.do_remote_decode: true`
 * runs normally (the proxy asks for 1 token), its blocks stay referenced, and
 * the response carries `kv_transfer_params` naming them. They are freed when
 * the decode side has pulled them, or after `abortTimeoutS` (vLLM's
 * VLLM_NIXL_ABORT_REQUEST_TIMEOUT) if nobody does.
 *
 * Decode side: a request with `do_remote_prefill: true` and the fields vLLM
 * requires skips the prefill: the scheduler allocates its blocks, "pulls" the
 * part not cached locally (a transfer time of tokens × bytesPerToken at
 * `gbps`), marks them computed (they become cached and are announced with
 * BlockStored), and decodes. Invalid params are logged and the prompt is
 * recomputed, as vLLM does.
 *
 * The side channel: real vLLM handshakes over ZeroMQ on
 * VLLM_NIXL_SIDE_CHANNEL_PORT and reads the blocks by RDMA. The simulator's
 * side channel is its HTTP port: `remote_host`/`remote_port` name the prefill
 * worker's HTTP listener, and at the end of the transfer the decode worker
 * calls `POST /sim/nixl/release {remote_request_id, remote_engine_id}` there.
 * A 404 (unknown or expired request) means the data was gone: the decode
 * worker recomputes.
 */
export interface NixlOptions {
  /** Link bandwidth for KV transfers, in Gbit/s. */
  gbps: number;
  /** KV bytes per token: 2 (K,V) × layers × kv heads × head dim × dtype bytes; Qwen3-0.6B bf16 = 114688. */
  bytesPerToken: number;
  /** Held prefill blocks are freed after this many (simulated) seconds without a pull. */
  abortTimeoutS: number;
  speedup: number;
}

export { NIXL_DEFAULTS } from './defaults.js';

export type KvTransferParams = Record<string, unknown>;

/** What a request's `kv_transfer_params` asks of this engine. */
export type TransferRole =
  { kind: 'none' } | { kind: 'prefill-for-remote' } | { kind: 'decode-from-remote'; params: RemoteParams };

export interface RemoteParams {
  engineId: string;
  requestId: string;
  host: string;
  port: number;
  /** Tokens the prefill engine computed; the whole prompt when it does not say. */
  numTokens: number | undefined;
}

interface Held {
  release(): void;
  timer: NodeJS.Timeout;
}

export class NixlAgent {
  readonly engineId = randomUUID();
  readonly #o: NixlOptions;
  readonly #log: Logger;
  readonly #held = new Map<string, Held>();
  /** Set once the HTTP server listens. */
  host = '127.0.0.1';
  port = 0;
  counters = { held: 0, pulled: 0, expired: 0, invalidParams: 0 };

  constructor(options: NixlOptions, log: Logger) {
    this.#o = options;
    this.#log = log;
  }

  get heldRequests(): number {
    return this.#held.size;
  }

  /** Reads `kv_transfer_params` as vLLM's NixlConnector would; invalid decode params are logged and ignored (recompute). */
  classify(body: unknown): TransferRole {
    const p = (body as { kv_transfer_params?: unknown } | null)?.kv_transfer_params;
    if (p === undefined || p === null || typeof p !== 'object' || Array.isArray(p)) return { kind: 'none' };
    const k = p as KvTransferParams;
    if (k.do_remote_decode === true) return { kind: 'prefill-for-remote' };
    if (k.do_remote_prefill !== true) return { kind: 'none' };
    const ids = k.remote_block_ids;
    const valid =
      Array.isArray(ids) &&
      typeof k.remote_engine_id === 'string' &&
      typeof k.remote_request_id === 'string' &&
      typeof k.remote_host === 'string' &&
      typeof k.remote_port === 'number' &&
      Number.isInteger(k.remote_port);
    if (!valid) {
      this.counters.invalidParams++;
      this.#log.warn({ kvTransferParams: k }, 'Got invalid KVTransferParams; recomputing the prompt');
      return { kind: 'none' };
    }
    const numTokens = typeof k.remote_num_tokens === 'number' ? k.remote_num_tokens : undefined;
    return {
      kind: 'decode-from-remote',
      params: {
        engineId: k.remote_engine_id as string,
        requestId: k.remote_request_id as string,
        host: k.remote_host as string,
        port: k.remote_port as number,
        numTokens,
      },
    };
  }

  /** Keeps a finished prefill's blocks for the decode side; `release` frees them. Returns the response's `kv_transfer_params`. */
  hold(requestId: string, blockIds: readonly number[], numTokens: number, release: () => void): KvTransferParams {
    const ms = (this.#o.abortTimeoutS * 1000) / this.#o.speedup;
    const timer = setTimeout(() => {
      if (!this.#held.delete(requestId)) return;
      this.counters.expired++;
      this.#log.warn(
        { remoteRequestId: requestId, abortTimeoutS: this.#o.abortTimeoutS },
        'remote prefill blocks expired without a pull; freeing them',
      );
      release();
    }, ms);
    timer.unref();
    this.#held.set(requestId, { release, timer });
    this.counters.held++;
    return {
      do_remote_prefill: true,
      do_remote_decode: false,
      remote_block_ids: [...blockIds],
      remote_engine_id: this.engineId,
      remote_request_id: requestId,
      remote_host: this.host,
      remote_port: this.port,
      tp_size: 1,
      remote_num_tokens: numTokens,
      remote_blocks_expiry_time: Date.now() / 1000 + ms / 1000,
    };
  }

  /** The decode side pulled the blocks: free them. False when unknown (never held, expired, already pulled). */
  release(requestId: string, engineId: unknown): boolean {
    if (engineId !== undefined && engineId !== this.engineId) return false;
    const h = this.#held.get(requestId);
    if (!h) return false;
    this.#held.delete(requestId);
    clearTimeout(h.timer);
    this.counters.pulled++;
    h.release();
    return true;
  }

  /** Transfer time of `tokens` tokens, in real ms. */
  transferMs(tokens: number): number {
    return (tokens * this.#o.bytesPerToken * 8) / (this.#o.gbps * 1e6) / this.#o.speedup;
  }

  /** The scheduler's view of a remote prefill: wait the transfer time, then tell the prefill side we are done. */
  remote(params: RemoteParams, promptLength: number): RemotePrefill {
    return {
      tokens: Math.min(params.numTokens ?? promptLength, promptLength),
      load: async (tokens) => {
        await new Promise((r) => setTimeout(r, this.transferMs(tokens)));
        const host = params.host.includes(':') ? `[${params.host}]` : params.host;
        try {
          const res = await request(`http://${host}:${params.port}/sim/nixl/release`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ remote_request_id: params.requestId, remote_engine_id: params.engineId }),
            headersTimeout: 5000,
            bodyTimeout: 5000,
          });
          await res.body.dump();
          if (res.statusCode === 200) return true;
          this.#log.warn(
            { remote: `${host}:${params.port}`, remoteRequestId: params.requestId, status: res.statusCode },
            'KV transfer failed: the prefill worker no longer holds the blocks; recomputing',
          );
        } catch (err) {
          this.#log.warn(
            { remote: `${host}:${params.port}`, remoteRequestId: params.requestId, err: (err as Error).message },
            'KV transfer failed: prefill worker unreachable; recomputing',
          );
        }
        return false;
      },
    };
  }

  close(): void {
    for (const h of this.#held.values()) clearTimeout(h.timer);
    this.#held.clear();
  }
}
