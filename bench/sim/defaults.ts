/**
 * Simulator defaults, as vLLM's for a small model (Qwen3-0.6B's context length).
 * A module of its own so `kvgate sim --help` and flag errors load no native modules.
 */
export const SIM_DEFAULTS = {
  host: '127.0.0.1',
  model: 'Qwen/Qwen3-0.6B',
  blockSize: 16,
  kvBlocks: 8192,
  maxNumBatchedTokens: 8192,
  maxNumSeqs: 256,
  maxModelLen: 40960,
  defaultChatTokens: 128,
  /** vLLM's --stream-interval: tokens per streamed chunk (1 = every token). */
  streamInterval: 1,
} as const;

/** The simulated NixlConnector's KV transfer model (see nixl.ts): 100 Gbit/s, Qwen3-0.6B's bf16 KV (2 × 28 layers × 8 heads × 128 × 2 bytes), vLLM's 480 s abort timeout. */
export const NIXL_DEFAULTS = { gbps: 100, bytesPerToken: 114_688, abortTimeoutS: 480 } as const;

/**
 * Endpoint of rank (or worker) `rank`, as vLLM offsets a DP rank's endpoints:
 * TCP port + rank (a wildcard port stays a wildcard), inproc/ipc names get a suffix.
 */
export function offsetEndpoint(endpoint: string, rank: number): string {
  if (rank === 0) return endpoint;
  const tcp = /^(tcp:\/\/.+):(\d+)$/.exec(endpoint);
  if (tcp) return `${tcp[1]}:${Number(tcp[2]) + rank}`;
  if (endpoint.startsWith('tcp://')) return endpoint;
  return `${endpoint}_dp${rank}`;
}
