import type { EngineBlockHash, KvEvent } from '../../indexer/events/types.js';

/** TensorRT-LLM's default retention priority (`KvCacheRetentionConfig::kDefaultRetentionPriority`). */
export const TRTLLM_DEFAULT_PRIORITY = 35;

/** `cache_level` of TRT-LLM's primary (GPU) and secondary (host) block pools. */
const PRIMARY = 0;
const SECONDARY = 1;

export interface TrtllmEventQueueOptions {
  /** The attention window every event is tagged with (one window: the model's context length). */
  windowSize: number;
  /** `num_blocks_per_cache_level` of the `created` event: [primary, secondary]. */
  blocksPerCacheLevel: readonly [number, number];
  /** `event_buffer_max_size`: beyond it the oldest events are dropped, and their ids with them. */
  maxEvents?: number | undefined;
}

/** JSON of an integer that may exceed 2^53: Python's json writes every digit. */
const int = (h: EngineBlockHash | number): string => (typeof h === 'string' ? BigInt(`0x${h}`) : h).toString();

/**
 * One event as trtllm-serve's `KVCacheEventSerializer.to_json_str` builds it,
 * rendered the way Starlette's JSONResponse writes it (json.dumps with
 * separators (",", ":")): keys in the serializer's order, no spaces.
 * `attention_dp_rank` is only present when the engine runs attention DP, which the sim does not.
 */
export function trtllmEventJson(eventId: number, data: string, windowSize: number): string {
  return `{"event_id":${eventId},"data":${data},"window_size":${windowSize}}`;
}

const diff = (newValue: number, oldValue: number) =>
  `{"type":"event_diff","new_value":${newValue},"old_value":${oldValue}}`;

/**
 * The `data` objects one simulator event becomes. A `moved` event becomes one
 * `updated` per block, as TRT-LLM announces each offload or onboard on its own;
 * it changes the cache level only, so the priority diff is absent (null).
 * `cleared` has no TRT-LLM counterpart: a TRT-LLM-mode cache announces a reset
 * as `removed` (see KvCache's `resetAs`).
 */
export function trtllmEventData(ev: KvEvent): string[] {
  switch (ev.kind) {
    case 'stored': {
      const blocks: string[] = [];
      for (let b = 0; b < ev.engineHashes.length; b++) {
        const tokens: string[] = [];
        for (let i = b * ev.blockSize; i < (b + 1) * ev.blockSize; i++)
          tokens.push(`{"type":"unique_token","token_id":${ev.tokenIds[i]!},"token_extra_id":0}`);
        const level = ev.tier === 'gpu' ? PRIMARY : SECONDARY;
        blocks.push(
          `{"type":"stored_block","block_hash":${int(ev.engineHashes[b]!)},"tokens":[${tokens.join(',')}],` +
            `"cache_level":${level},"priority":${TRTLLM_DEFAULT_PRIORITY}}`,
        );
      }
      const parent = ev.parentEngineHash === null ? 'null' : int(ev.parentEngineHash);
      return [`{"type":"stored","parent_hash":${parent},"blocks":[${blocks.join(',')}]}`];
    }
    case 'removed':
      return [`{"type":"removed","block_hashes":[${ev.engineHashes.map(int).join(',')}]}`];
    case 'moved': {
      const level = ev.tier === 'gpu' ? diff(PRIMARY, SECONDARY) : diff(SECONDARY, PRIMARY);
      return ev.engineHashes.map(
        (h) => `{"type":"updated","block_hash":${int(h)},"cache_level":${level},"priority":null}`,
      );
    }
    case 'cleared':
      return [];
  }
}

/**
 * The engine-side queue behind trtllm-serve's `POST /kv_cache_events`: every
 * event gets the next id (from 0, a `created` event first), and a poll takes
 * them all. Nothing is kept once taken, so a poller that misses a response
 * cannot ask again, as with the real endpoint.
 */
export class TrtllmEventQueue {
  readonly #windowSize: number;
  readonly #maxEvents: number;
  #nextId = 0;
  #events: string[] = [];
  #dropped = 0;

  constructor(options: TrtllmEventQueueOptions) {
    this.#windowSize = options.windowSize;
    this.#maxEvents = Math.max(1, options.maxEvents ?? 10_000);
    const [primary, secondary] = options.blocksPerCacheLevel;
    this.#add(`{"type":"created","num_blocks_per_cache_level":[${primary},${secondary}]}`);
  }

  get nextEventId(): number {
    return this.#nextId;
  }

  /** Events dropped because the queue was full. */
  get dropped(): number {
    return this.#dropped;
  }

  publish(events: readonly KvEvent[]): void {
    for (const ev of events) for (const data of trtllmEventData(ev)) this.#add(data);
  }

  /** The response body: a JSON array of every queued event, oldest first; the queue is left empty. */
  drain(): string {
    const body = `[${this.#events.join(',')}]`;
    this.#events = [];
    return body;
  }

  #add(data: string): void {
    this.#events.push(trtllmEventJson(this.#nextId++, data, this.#windowSize));
    if (this.#events.length > this.#maxEvents) {
      this.#events.shift();
      this.#dropped++;
    }
  }
}
