/** Output tokens assumed for decode-block accounting when the request sets no limit. */
export const DEFAULT_OUTPUT_TOKENS = 256;

/**
 * KV blocks a request will hold once decoding: its prompt plus the output it
 * may generate (`maxTokens`, or the default when it sets none), rounded up to
 * whole blocks. What `Fleet.start` counts as the worker's decode load.
 */
export function requestBlocks(promptTokens: number, maxTokens: number | undefined, blockSize: number): number {
  return Math.ceil((promptTokens + (maxTokens ?? DEFAULT_OUTPUT_TOKENS)) / blockSize);
}
