import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { KvCache } from './kv-cache.js';
import type { KvEventPublisher } from './kv-publisher.js';
import type { SimMetrics } from './metrics.js';
import type { KvTransferParams, NixlAgent } from './nixl.js';
import { asObject, parseChat, parseCompletion, randomHex, SimHttpError, type OpenAiContext } from './openai.js';
import {
  chatBody,
  chatChunk,
  completionBody,
  completionChunk,
  modelCard,
  usage,
  usageChunk,
  type ResponseHead,
} from './openai-bodies.js';
import type { FinishReason, Scheduler } from './scheduler.js';
import { poolingHandler } from './pooling.js';
import { createMessage, createResponse, storedResponse } from './responses.js';
import type { TrtllmEventQueue } from './trtllm-events.js';
import { ENGINE_ROUTES, pickRank } from './dp-rank.js';
import { detokenize, tokenize } from './tokenization.js';
import type { CpuTier, CpuTierStats } from './cpu-tier.js';
import { offloadApi } from './offload-api.js';
import { asToolCallBody, forcedTool, toolCallDelta } from './tool-calls.js';

export interface SimStats extends Partial<CpuTierStats> {
  /** Prompt tokens loaded back from the CPU tier (with --cpu-kv-blocks). */
  cpuLoadTokens?: number;
  id: string;
  running: number;
  waiting: number;
  kvBlocksUsed: number;
  kvBlocksTotal: number;
  kvBlocksCached: number;
  kvUsage: number;
  evictions: number;
  prefixQueryTokens: number;
  prefixHitTokens: number;
  prefillTokensComputed: number;
  decodeTokens: number;
  generatedTokens: number;
  steps: number;
  preemptions: number;
  /** Real ms the engine loop fell behind its clock (see SchedulerCounters.lostMs). */
  lostMs: number;
  /** Real ms of steps that computed prefill (see SchedulerCounters.prefillBusyMs). */
  prefillBusyMs: number;
  /** Next KV event batch sequence number (string: it is a u64); null without --kv-events. */
  kvEventsNextSeq: string | null;
  /** P/D: remote prefills pulled here, their tokens, failed pulls; prefills held here for a remote decode. */
  kvLoads: number;
  kvLoadTokens: number;
  kvLoadFailures: number;
  nixlHeld: number;
  nixlPulled: number;
  nixlExpired: number;
  /** TRT-LLM event mode: blocks in the secondary cache level, offloads into it and blocks it dropped. */
  kvSecondaryBlocksCached: number;
  kvOffloads: number;
  kvSecondaryEvictions: number;
  /** With data parallelism: each rank's own figures (the top level sums them). */
  dataParallelRanks?: SimStats[];
}

/** One data-parallel rank: its own KV cache, scheduler and KV event publisher. */
export interface SimRankDeps {
  readonly rank: number;
  readonly scheduler: Scheduler;
  readonly cache: KvCache;
  readonly publisher: KvEventPublisher | undefined;
  /** The host-memory KV tier (with --cpu-kv-blocks). */
  readonly cpu?: CpuTier | undefined;
}

export interface SimServerDeps extends SimRankDeps {
  ctx: OpenAiContext;
  metrics: SimMetrics;
  logger: Logger;
  nixl: NixlAgent;
  stats(): SimStats;
  /** Every rank of this server, by rank; the top-level rank fields are the one a request runs on. */
  ranks: readonly SimRankDeps[];
  /** TensorRT-LLM event mode: the queue `POST /kv_cache_events` drains. */
  trtllm: TrtllmEventQueue | undefined;
}

const MAX_BODY_BYTES = 64 * 1024 * 1024;

type Handler = (
  deps: SimServerDeps,
  req: IncomingMessage,
  res: ServerResponse,
  headers: Record<string, string>,
) => Promise<void>;

/**
 * vLLM's OpenAI-compatible surface on node:http, plus sim-only controls under
 * `/sim/` (not part of vLLM's API: test and benchmark hooks).
 */
const routes: Record<string, Record<string, Handler>> = {
  '/health': { GET: async (_d, _q, res, h) => void res.writeHead(200, { ...h, 'content-length': '0' }).end() },
  '/version': { GET: async (_d, _q, res, h) => sendJson(res, 200, { version: 'kvgate-sim' }, h) },
  '/v1/models': {
    GET: async (d, _q, res, h) => sendJson(res, 200, modelCard(d.ctx, Math.floor(Date.now() / 1000)), h),
  },
  '/v1/completions': { POST: (d, q, res, h) => generate('completion', d, q, res, h) },
  '/v1/chat/completions': { POST: (d, q, res, h) => generate('chat', d, q, res, h) },
  // vLLM serves these only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; success is a plain-text sentence.
  '/v1/load_lora_adapter': {
    POST: async (d, q, res, h) => sendText(res, d.ctx.loras.load(asObject(await readJson(q)), d.ctx.model), h),
  },
  '/v1/unload_lora_adapter': {
    POST: async (d, q, res, h) => sendText(res, d.ctx.loras.unload(asObject(await readJson(q))), h),
  },
  '/v1/responses': { POST: createResponse },
  '/v1/messages': { POST: createMessage },
  '/v1/embeddings': { POST: poolingHandler('embeddings') },
  '/pooling': { POST: poolingHandler('pooling') },
  '/score': { POST: poolingHandler('score') },
  '/v1/score': { POST: poolingHandler('score') },
  '/rerank': { POST: poolingHandler('rerank') },
  '/v1/rerank': { POST: poolingHandler('rerank') },
  '/tokenize': { POST: tokenize },
  '/detokenize': { POST: detokenize },
  '/metrics': {
    GET: async (d, _q, res, h) => {
      const text = await d.metrics.text();
      res.writeHead(200, { ...h, 'content-type': d.metrics.contentType }).end(text);
    },
  },
  // trtllm-serve's pull API (TRT-LLM event mode only): the queued events as a JSON array, queue drained.
  '/kv_cache_events': {
    POST: async (d, _q, res, h) => {
      if (!d.trtllm) return sendJson(res, 404, { detail: 'Not Found' }, h);
      const body = d.trtllm.drain();
      res
        .writeHead(200, { ...h, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
        .end(body);
    },
  },
  // LMCache controller-style pin and lookup of the host tier (offload-api.ts).
  '/pin': { POST: async (d, q, res, h) => offloadApi('/pin', await readJson(q), simOffload(d), res, h) },
  '/lookup': { POST: async (d, q, res, h) => offloadApi('/lookup', await readJson(q), simOffload(d), res, h) },
  '/sim/stats': { GET: async (d, _q, res, h) => sendJson(res, 200, d.stats(), h) },
  '/sim/drop-kv-events': { POST: dropKvEvents },
  // The simulated NIXL side channel: a decode worker that pulled a remote prefill's blocks frees them here.
  '/sim/nixl/release': {
    POST: async (d, q, res, h) => {
      const body = asObject(await readJson(q));
      const id = body.remote_request_id;
      if (typeof id !== 'string')
        throw new SimHttpError(400, 'remote_request_id must be a string', 'BadRequestError', 'remote_request_id');
      if (!d.nixl.release(id, body.remote_engine_id))
        throw new SimHttpError(404, `no remote prefill '${id}' is held here (unknown, expired or already pulled)`);
      sendJson(res, 200, { released: id }, h);
    },
  },
  '/sim/reset-prefix-cache': {
    POST: async (d, _q, res, h) => {
      resetPrefixCache(d);
      sendJson(res, 200, { reset: true }, h);
    },
  },
  // vLLM's own (dev-mode) endpoint: 200, empty body.
  '/reset_prefix_cache': {
    POST: async (d, _q, res, h) => {
      resetPrefixCache(d);
      res.writeHead(200, { ...h, 'content-length': '0' }).end();
    },
  },
};

const responsesById: Record<string, Handler> = { GET: storedResponse, DELETE: storedResponse, POST: storedResponse };

export function createSimHandler(deps: SimServerDeps): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const headers: Record<string, string> = {};
    const requestId = req.headers['x-request-id'];
    if (typeof requestId === 'string') headers['x-request-id'] = requestId;
    const path = (req.url ?? '/').split('?')[0]!;
    // Stored responses are addressed by id; the handler checks the rest of the path and the method.
    const route = path.startsWith('/v1/responses/') ? responsesById : routes[path];
    const handler = route?.[req.method ?? 'GET'];
    if (!route) return sendJson(res, 404, { detail: 'Not Found' }, headers);
    if (!handler) return sendJson(res, 405, { detail: 'Method Not Allowed' }, headers);
    let d = deps;
    try {
      const rank = pickRank(deps.ranks, req.headers['x-data-parallel-rank'], ENGINE_ROUTES.has(path));
      if (rank !== deps.rank) d = { ...deps, ...deps.ranks[rank]! };
    } catch (err) {
      return sendJson(res, 400, (err as SimHttpError).body(), headers);
    }
    handler(d, req, res, headers).catch((err: unknown) => {
      if (err instanceof SimHttpError) return sendJson(res, err.status, err.body(), headers);
      deps.logger.error({ err, path }, 'sim request failed');
      sendJson(
        res,
        500,
        new SimHttpError(500, (err as Error).message ?? String(err), 'InternalServerError').body(),
        headers,
      );
    });
  };
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string>): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = JSON.stringify(body);
  res
    .writeHead(status, { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
    .end(text);
}

function sendText(res: ServerResponse, text: string, headers: Record<string, string>): void {
  res
    .writeHead(200, {
      ...headers,
      'content-type': 'text/plain; charset=utf-8',
      'content-length': Buffer.byteLength(text),
    })
    .end(text);
}

export async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new SimHttpError(413, `request body larger than ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new SimHttpError(400, `JSON decode error: ${(err as Error).message}`);
  }
}

async function generate(
  kind: 'completion' | 'chat',
  d: SimServerDeps,
  req: IncomingMessage,
  res: ServerResponse,
  headers: Record<string, string>,
): Promise<void> {
  const body = await readJson(req);
  const parsed = kind === 'chat' ? await parseChat(body, d.ctx) : await parseCompletion(body, d.ctx);
  if (res.destroyed) return; // client left while we tokenized
  const transfer = d.nixl.classify(body);
  const tool = kind === 'chat' ? forcedTool(asObject(body)) : null;
  // A streamed prefill could not report kv_transfer_params, so nothing would ever pull its blocks.
  const keepBlocks = transfer.kind === 'prefill-for-remote' && !parsed.stream;
  const head: ResponseHead = {
    id: `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomHex(16)}`,
    created: Math.floor(Date.now() / 1000),
    model: parsed.lora?.name ?? d.ctx.model,
  };
  const started = performance.now();
  const tok = d.ctx.tokenizer;
  const pieces: string[] = [];
  const sse = (data: unknown) => res.write(`data: ${JSON.stringify(data)}\n\n`);
  if (parsed.stream) {
    res.writeHead(200, { ...headers, 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
    res.flushHeaders();
  }
  const last = parsed.maxTokens - 1;
  const interval = d.ctx.streamInterval;
  const simReq = d.scheduler.add({
    id: head.id,
    promptTokens: parsed.promptTokens,
    maxTokens: parsed.maxTokens,
    finishReason: parsed.finishReason,
    lora: parsed.lora,
    cacheSalt: parsed.cacheSalt,
    mediaSpans: parsed.mediaSpans,
    keepBlocks,
    remote:
      transfer.kind === 'decode-from-remote' ? d.nixl.remote(transfer.params, parsed.promptTokens.length) : undefined,
    outputToken: (i) => tok.outputToken(i),
    onToken(_token, index) {
      if (index === 0) d.metrics.observeFirstToken((performance.now() - started) / 1000, d.rank);
      pieces.push(tok.outputText(index));
      if (!parsed.stream) return;
      if (res.destroyed) return; // the abort follows on 'close'
      // vLLM's stream interval: the first token goes at once, then every `interval` tokens, and the rest at the end.
      if (index !== 0 && index !== last && pieces.length < interval) return;
      const text = pieces.join('');
      pieces.length = 0;
      const finish = index === last ? parsed.finishReason : null;
      if (kind === 'completion') return void sse(completionChunk(head, text, finish));
      if (index === 0) sse(chatChunk(head, { role: 'assistant', content: '' }, null));
      if (tool && index === last) return void sse(chatChunk(head, toolCallDelta(tool), 'tool_calls'));
      if (!tool) sse(chatChunk(head, { content: text }, finish));
    },
    onFinish(reason: FinishReason, message?: string) {
      if (reason === 'abort') {
        if (!res.writableEnded) res.destroy();
        return;
      }
      const seconds = (performance.now() - started) / 1000;
      d.metrics.observeFinished(seconds, reason, d.rank);
      d.logger.debug(
        {
          id: head.id,
          promptTokens: simReq.promptLength,
          cachedTokens: simReq.cachedTokens,
          outputTokens: simReq.outputCount,
          seconds,
        },
        'sim request finished',
      );
      if (reason === 'error') {
        const err = new SimHttpError(400, message ?? 'request failed');
        if (!parsed.stream) return sendJson(res, 400, err.body(), headers);
        sse(err.body());
        return void res.end('data: [DONE]\n\n');
      }
      const u = usage(simReq.promptLength, simReq.outputCount, simReq.cachedTokens);
      if (!parsed.stream) {
        const text = pieces.join('');
        let kv: KvTransferParams | null = null;
        if (keepBlocks && res.destroyed)
          d.scheduler.release(simReq); // nobody will learn the params to pull them
        else if (keepBlocks) {
          const promptBlocks = simReq.blockIds.slice(0, Math.ceil(simReq.promptLength / d.cache.blockSize));
          kv = d.nixl.hold(head.id, promptBlocks, simReq.promptLength, () => d.scheduler.release(simReq));
        }
        const answer =
          kind === 'chat' ? chatBody(head, text, reason, u, kv) : completionBody(head, text, reason, u, kv);
        return sendJson(res, 200, tool ? asToolCallBody(answer, tool) : answer, headers);
      }
      if (parsed.includeUsage) sse(usageChunk(kind, head, u));
      res.end('data: [DONE]\n\n');
    },
  });
  // A client that goes away mid-request frees its slot and blocks at once, as vLLM aborts on disconnect.
  res.on('close', () => {
    if (!res.writableFinished) d.scheduler.abort(simReq);
  });
}

async function dropKvEvents(
  d: SimServerDeps,
  req: IncomingMessage,
  res: ServerResponse,
  headers: Record<string, string>,
): Promise<void> {
  const body = asObject(await readJson(req));
  const count = body.count;
  if (typeof count !== 'number' || !Number.isInteger(count) || count < 0)
    throw new SimHttpError(400, 'count must be an integer >= 0', 'BadRequestError', 'count');
  if (!d.publisher)
    throw new SimHttpError(400, 'ZeroMQ KV events are not enabled on this worker (start it with --kv-events)');
  d.publisher.dropNext(count);
  sendJson(res, 200, { dropping: count, nextSeq: String(d.publisher.nextSeq) }, headers);
}

/** vLLM resets every data-parallel rank's cache. */
function resetPrefixCache(d: SimServerDeps): void {
  for (const r of d.ranks) {
    r.cache.reset();
    r.scheduler.flushEvents();
  }
  d.logger.info('prefix cache reset');
}

const simOffload = (d: SimServerDeps) => ({ cache: d.cache, cpu: d.cpu, instanceId: d.stats().id });
