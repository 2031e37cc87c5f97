import { decodeKvBatchPayload, KvDecodeError, type SkipCounts } from './decode-msgpack.js';
import { decodeTrtllmEvents } from './decode-trtllm.js';
import type { KvEventBatch } from './types.js';

export interface DecodedPayload {
  /** In sequence order. */
  batches: KvEventBatch[];
  /** Events dropped, each alone, by reason. */
  skipped: SkipCounts;
}

/**
 * Turns one transport payload into batches. `seq` is the transport's sequence
 * number when it carries one (ZMQ frame 2); formats that number their own
 * events (TRT-LLM's JSON) ignore it. Throws KvDecodeError on a payload that is
 * not this format; the source counts it and moves on.
 */
export interface PayloadDecoder {
  decode(payload: Uint8Array | string, seq: bigint | null): DecodedPayload;
}

export interface DecoderOptions {
  /** Tokens per KV block when the format does not say (TRT-LLM JSON). */
  blockSize?: number | undefined;
  now?: (() => number) | undefined;
}

function text(payload: Uint8Array | string): string {
  return typeof payload === 'string' ? payload : Buffer.from(payload).toString('utf8');
}

/**
 * Payload formats by config name (`kvEvents.format`). A new engine format is
 * one decoder file and one line here.
 */
export const PAYLOAD_FORMATS = {
  /** msgpack `EventBatch`: vLLM (every release), SGLang, TRT-LLM's ZMQ publisher. */
  msgpack: (): PayloadDecoder => ({
    decode(payload, seq) {
      if (seq === null) throw new KvDecodeError('msgpack batches need a transport sequence number');
      const d = decodeKvBatchPayload(typeof payload === 'string' ? Buffer.from(payload) : payload);
      return {
        batches: [{ seq, ts: d.ts, dataParallelRank: d.dataParallelRank, events: d.events }],
        skipped: d.skippedByReason,
      };
    },
  }),
  /** trtllm-serve `POST /kv_cache_events` JSON: one batch per event, its `event_id` the seq. */
  'trtllm-json': (options: DecoderOptions): PayloadDecoder => {
    let maxWindowSize: number | undefined;
    return {
      decode(payload) {
        const d = decodeTrtllmEvents(text(payload), { blockSize: options.blockSize, maxWindowSize, now: options.now });
        maxWindowSize = d.maxWindowSize;
        return { batches: d.batches, skipped: d.skippedByReason };
      },
    };
  },
} satisfies Record<string, (options: DecoderOptions) => PayloadDecoder>;

export type PayloadFormat = keyof typeof PAYLOAD_FORMATS;
export const PAYLOAD_FORMAT_NAMES = Object.keys(PAYLOAD_FORMATS) as [PayloadFormat, ...PayloadFormat[]];

export function createDecoder(format: PayloadFormat, options: DecoderOptions = {}): PayloadDecoder {
  return PAYLOAD_FORMATS[format](options);
}
