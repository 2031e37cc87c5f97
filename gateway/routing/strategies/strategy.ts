import type { IncomingHttpHeaders } from 'node:http';
import type { Logger } from 'pino';
import type { MatchCounts } from '../../../indexer/index/radix-index.js';
import type { PromptBlocks } from '../../../indexer/tokenize/prompt-tokens.js';

export type { MatchCounts, PromptBlocks };

/**
 * The gateway's own live view of one worker's load, updated as requests are
 * routed, reach their first token and finish. A request counts as prefill from
 * routing until its first token, and as decode from then until it ends.
 */
export interface WorkerLoad {
  /** Requests routed to this worker and not yet finished. */
  inflightRequests: number;
  /** Requests still waiting for their first token. */
  prefillRequests: number;
  /** Prompt tokens of requests still waiting for their first token. */
  prefillTokens: number;
  /** Requests past their first token and not yet finished. */
  decodeRequests: number;
  /** KV blocks held by requests in decode (prompt plus expected output, in blocks). */
  decodeBlocks: number;
}

export type WorkerRole = 'both' | 'prefill' | 'decode';

/** What a strategy may know about a candidate worker. Availability is filtered before any strategy runs. */
export interface WorkerView {
  readonly id: string;
  readonly url: string;
  readonly models: readonly string[];
  readonly role: WorkerRole;
  readonly labels: Readonly<Record<string, string>>;
  readonly load: Readonly<WorkerLoad>;
  /** This replica's in-flight requests at block grain (absent on hand-built views: strategies fall back to `load`). */
  readonly active?: ActiveBlocksView | undefined;
}

/** Per-worker view of in-flight requests as Dynamo's active-sequence tracking sees them (gateway/fleet/active-sequences.ts). */
export interface ActiveBlocksView {
  /** Prompt tokens not predicted cached (prompt − predicted cached blocks × block size) of requests awaiting their first token. */
  readonly prefillUncachedTokens: number;
  /** The whole prompts of those requests (this replica's part of `WorkerLoad.prefillTokens`). */
  readonly prefillPromptTokens: number;
  /** `prefillUncachedTokens` less the estimated progress on the one being prefilled (see ActiveSequences). */
  prefillRemaining(now: number, tokensPerMs: number): number;
  /** Distinct prompt block hashes held by in-flight requests: a prefix shared by several counts once. */
  readonly uniqueBlocks: number;
  /** Expected output blocks (`max_tokens`, or the default) of in-flight requests. */
  readonly outputBlocks: number;
  has(hash: bigint): boolean;
}

/**
 * Prompt tokens awaiting their first token on `w` beyond this replica's own: what other replicas
 * published (whole prompts, all they send), to add to this replica's uncached part.
 */
export function otherReplicasPrefillTokens(w: WorkerView, a: ActiveBlocksView): number {
  return Math.max(0, w.load.prefillTokens - a.prefillPromptTokens);
}

/** One request's routing view, built once per request and shared by every strategy that looks at it. */
export interface RouteContext {
  readonly requestId: string;
  readonly model: string;
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
  /** Value of the configured session header, when present. */
  readonly sessionKey: string | undefined;
  /** Exact prompt tokens when the prompt was tokenized, else an estimate. */
  readonly promptTokens: number;
  /** Present when the strategy asked for it (`needsPromptBlocks`) and the prompt could be tokenized. */
  readonly blocks: PromptBlocks | undefined;
  readonly random: () => number;
  readonly now: () => number;
}

/** One candidate's score, for `/debug/route` and logs. */
export interface CandidateScore {
  worker: string;
  /** Terms that made up the score (overlap, load terms, cost), by name. */
  terms: Record<string, number>;
}

export interface Decision {
  worker: WorkerView;
  /** JSON-serialisable reasons: why this worker, in the strategy's own terms. */
  explain: Record<string, unknown>;
  /** Blocks of the prompt the strategy expects the chosen worker to hold already. */
  predictedCachedBlocks?: number;
  /** Data-parallel rank to target inside the worker, when the index tracks ranks. */
  dataParallelRank?: number;
  candidates?: CandidateScore[];
}

/**
 * A routing strategy: one per file in this folder, registered by name in
 * `registry.ts`. `choose` is synchronous and gets a non-empty candidate list.
 */
export interface Strategy {
  readonly name: string;
  /** Ask the pipeline to tokenize and hash the prompt before `choose`. */
  readonly needsPromptBlocks?: boolean;
  choose(ctx: RouteContext, candidates: readonly WorkerView[]): Decision;
  /** Called after the request was sent to the chosen worker (approximate indexes learn here). */
  onRouted?(ctx: RouteContext, decision: Decision): void;
}

/**
 * The slice of a KV index (events-fed `KvIndexer` or the routing-fed
 * `ApproxIndex`) a strategy reads, so strategies never see an index
 * implementation and tests can pass a fake. Keys are target keys (`targetKey`
 * in indexer/index/radix-index.ts): `workerId`, or `workerId#rank` for data-parallel rank `rank`.
 */
export interface PrefixMatcher {
  /** Per target, leading blocks of the prompt held (any tier) and how many of those are on GPU. */
  match(hashes: readonly bigint[]): Map<string, MatchCounts>;
  /**
   * Blocks indexed for a target (its tree size), for Dynamo's smaller-tree
   * tie-break. Optional; `KvIndexer` calls it `blocksOf`, `ApproxIndex` `treeSize`.
   */
  blocksOf?(target: string): number;
  treeSize?(target: string): number;
}

/** What a strategy factory may use. Built once by the composition root (`startGateway`). */
export interface StrategyDeps {
  readonly random: () => number;
  readonly now: () => number;
  readonly log: Logger;
  /** Every configured worker, healthy or not (for strategies that keep per-worker state). */
  readonly workers: readonly WorkerView[];
  /** Default KV block size from the `models` config (16 unless set). */
  readonly blockSize: number;
  /** The events-fed KV index, when the config gives workers `kvEvents`; strategies without it route by load. */
  readonly index?: PrefixMatcher | undefined;
}
