import { readFileSync } from 'node:fs';

/** One request of a Mooncake-format trace (`{timestamp, input_length, output_length, hash_ids}`). */
export interface TraceRequest {
  /** Arrival, ms since the trace started. */
  timestamp: number;
  inputLength: number;
  outputLength: number;
  /** Prefix-chained ids of the prompt's `TRACE_BLOCK_TOKENS`-token blocks. */
  hashIds: number[];
}

/** Mooncake traces hash prompts in 512-token blocks. */
export const TRACE_BLOCK_TOKENS = 512;
/** Qwen3's special tokens start at 151643; generated prompts stay below so they decode as ordinary text. */
export const PROMPT_VOCAB = 151_643;

/**
 * Parses JSONL text in the Mooncake format; a bad line throws with its line
 * number, so a wrong file fails at once rather than half-way through a run.
 */
export function parseTrace(text: string, limit = Infinity): TraceRequest[] {
  const out: TraceRequest[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length && out.length < limit; i++) {
    const line = lines[i]!.trim();
    if (line === '') continue;
    let raw: Record<string, unknown>;
    try {
      raw = JSON.parse(line) as Record<string, unknown>;
    } catch (err) {
      throw new Error(`trace line ${i + 1}: not JSON (${(err as Error).message})`);
    }
    const { timestamp, input_length: inputLength, output_length: outputLength, hash_ids: hashIds } = raw;
    const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0;
    if (
      !isCount(timestamp) ||
      !isCount(inputLength) ||
      !isCount(outputLength) ||
      inputLength < 1 ||
      !Array.isArray(hashIds) ||
      !hashIds.every(isCount)
    ) {
      throw new Error(
        `trace line ${i + 1}: expected {timestamp, input_length >= 1, output_length, hash_ids: [int...]} (Mooncake format)`,
      );
    }
    if (hashIds.length !== Math.ceil(inputLength / TRACE_BLOCK_TOKENS)) {
      throw new Error(
        `trace line ${i + 1}: ${hashIds.length} hash_ids for ${inputLength} input tokens; expected ceil(input_length / ${TRACE_BLOCK_TOKENS})`,
      );
    }
    out.push({ timestamp, inputLength, outputLength, hashIds: hashIds });
  }
  return out;
}

export function readTrace(file: string, limit = Infinity): TraceRequest[] {
  return parseTrace(readFileSync(file, 'utf8'), limit);
}

/**
 * The 512 token ids standing for one trace block: a mulberry32 stream seeded
 * by the hash id (mixed first, so neighbouring ids do not start alike). The
 * same id always yields the same tokens, in every run and every process.
 */
export function blockTokens(hashId: number, out: number[] = [], length = TRACE_BLOCK_TOKENS): number[] {
  let s = Math.imul(hashId ^ 0x9e3779b9, 0x85ebca6b) ^ 0x5bd1e995;
  for (let i = 0; i < length; i++) {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    out.push(((t ^ (t >>> 14)) >>> 0) % PROMPT_VOCAB);
  }
  return out;
}

/** The request's prompt: its blocks' tokens concatenated, the last block cut to `inputLength`. */
export function promptTokens(req: TraceRequest): number[] {
  const out: number[] = [];
  for (let j = 0; j < req.hashIds.length; j++) {
    blockTokens(req.hashIds[j]!, out, Math.min(TRACE_BLOCK_TOKENS, req.inputLength - j * TRACE_BLOCK_TOKENS));
  }
  return out;
}

export interface UpperBound {
  /** Block references, and those whose id appeared in an earlier request (the trace-level figure). */
  blocks: number;
  hitBlocks: number;
  blockRate: number;
  distinctBlocks: number;
  /** Prompt tokens, and those in blocks seen before counted whole (the naive token figure). */
  tokens: number;
  naiveHitTokens: number;
  naiveTokenRate: number;
  /**
   * Tokens an infinite prefix cache shared by every worker could really serve:
   * a block seen before only as a cut-short last block holds just that many
   * tokens (and the run stops there), the engine caches whole
   * `engineBlockSize`-token blocks only, and always computes the last prompt token.
   */
  hitTokens: number;
  tokenRate: number;
}

/**
 * Prefix hit rate of an infinite cache shared by every worker. Ids are
 * prefix-chained, so the blocks seen before always form a leading run.
 */
export function upperBound(trace: readonly TraceRequest[], engineBlockSize = 1): UpperBound {
  const seenLen = new Map<number, number>();
  let blocks = 0,
    hitBlocks = 0,
    tokens = 0,
    naiveHitTokens = 0,
    hitTokens = 0;
  for (const r of trace) {
    tokens += r.inputLength;
    let run = 0;
    let open = true;
    for (let j = 0; j < r.hashIds.length; j++) {
      const id = r.hashIds[j]!;
      const len = Math.min(TRACE_BLOCK_TOKENS, r.inputLength - j * TRACE_BLOCK_TOKENS);
      const seen = seenLen.get(id);
      blocks++;
      if (seen !== undefined) {
        hitBlocks++;
        naiveHitTokens += len;
        if (open) run += Math.min(len, seen);
        if (seen < len) open = false;
      } else {
        open = false;
      }
      if (seen === undefined || seen < len) seenLen.set(id, len);
    }
    hitTokens += Math.floor(Math.min(run, r.inputLength - 1) / engineBlockSize) * engineBlockSize;
  }
  const rate = (a: number, b: number) => (b ? a / b : 0);
  return {
    blocks,
    hitBlocks,
    blockRate: rate(hitBlocks, blocks),
    distinctBlocks: seenLen.size,
    tokens,
    naiveHitTokens,
    naiveTokenRate: rate(naiveHitTokens, tokens),
    hitTokens,
    tokenRate: rate(hitTokens, tokens),
  };
}

/** Shape of a trace, for the report header. */
export function describeTrace(trace: readonly TraceRequest[]): {
  requests: number;
  durationS: number;
  meanInput: number;
  meanOutput: number;
  maxTotal: number;
} {
  let input = 0,
    output = 0,
    maxTotal = 0;
  for (const r of trace) {
    input += r.inputLength;
    output += r.outputLength;
    maxTotal = Math.max(maxTotal, r.inputLength + r.outputLength);
  }
  const n = trace.length || 1;
  const first = trace[0]?.timestamp ?? 0;
  return {
    requests: trace.length,
    durationS: ((trace.at(-1)?.timestamp ?? 0) - first) / 1000,
    meanInput: input / n,
    meanOutput: output / n,
    maxTotal,
  };
}
