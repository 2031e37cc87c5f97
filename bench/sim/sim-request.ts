import type { MediaSpan } from './media.js';
import type { CacheSeq } from './kv-cache.js';
import type { SimLora } from './lora.js';

export type FinishReason = 'length' | 'stop' | 'abort' | 'error';

/**
 * The decode side of prefill/decode disaggregation: the prompt's KV was
 * computed by another engine and is pulled rather than recomputed.
 */
export interface RemotePrefill {
  /** Prompt tokens the remote engine computed (its `remote_num_tokens`). */
  readonly tokens: number;
  /**
   * Pulls `tokens` tokens' worth of KV (the part not cached locally) into
   * blocks already allocated; resolves false when the remote side no longer
   * has them, and the engine then recomputes, as vLLM does.
   */
  load(tokens: number): Promise<boolean>;
}

export interface SimRequestInit {
  id: string;
  promptTokens: number[];
  /** Tokens to generate; the request finishes after the last one. */
  maxTokens: number;
  /** Reported when `maxTokens` is reached: 'length' for a max_tokens cap, 'stop' for a simulated EOS. */
  finishReason: 'length' | 'stop';
  /** Token id of the k-th generated token (filler). */
  outputToken(index: number): number;
  onToken(tokenId: number, index: number): void;
  onFinish(reason: FinishReason, message?: string): void;
  remote?: RemotePrefill | undefined;
  /** The adapter the request runs with; its name is part of every block hash, as in vLLM's extra keys. */
  lora?: SimLora | null | undefined;
  /** vLLM's `cache_salt`: part of the first block's hash (and so of every block after it). */
  cacheSalt?: string | null | undefined;
  /** Media placeholders in the prompt: the blocks covering them are keyed by the media's content. */
  mediaSpans?: readonly MediaSpan[] | undefined;
  /**
   * The prefill side of disaggregation: the blocks stay referenced after the
   * request finishes, until `Scheduler.release` (the decode side pulled them, or they expired).
   */
  keepBlocks?: boolean | undefined;
}

/** One request's life in the engine; also its hold on KV blocks. */
export class SimRequest implements CacheSeq {
  readonly tokens: number[];
  readonly lora: SimLora | null;
  readonly cacheSalt: string | null;
  readonly mediaSpans: readonly MediaSpan[];
  blockIds: number[] = [];
  blockHashes: bigint[] = [];
  committedBlocks = 0;
  numComputed = 0;
  outputCount = 0;
  /** Prefix tokens found in the cache (or loaded from a remote prefill) at first admission; -1 until admitted. */
  cachedTokens = -1;
  preemptions = 0;
  /** `loading`: blocks allocated, remote KV being pulled (vLLM's WAITING_FOR_REMOTE_KVS). */
  state: 'waiting' | 'loading' | 'running' | 'finished' = 'waiting';
  readonly promptLength: number;
  readonly arrivalMs: number;
  firstTokenMs: number | undefined;

  constructor(
    readonly init: SimRequestInit,
    now: number,
  ) {
    this.tokens = [...init.promptTokens];
    this.lora = init.lora ?? null;
    this.cacheSalt = init.cacheSalt ?? null;
    this.mediaSpans = init.mediaSpans ?? [];
    this.promptLength = init.promptTokens.length;
    this.arrivalMs = now;
  }
}
