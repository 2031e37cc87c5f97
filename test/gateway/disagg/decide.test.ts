import t from 'tap';
import { disaggConfigSchema } from '../../../gateway/disagg/config.js';
import { decide } from '../../../gateway/disagg/decide.js';
import { createKvStrategy } from '../../../gateway/routing/strategies/kv.js';
import type { PrefixMatcher } from '../../../gateway/routing/strategies/overlap.js';
import type { RouteContext, WorkerRole, WorkerView } from '../../../gateway/routing/strategies/strategy.js';

/** Conditional disaggregation as a pure decision over fake workers and a fake index. */
const worker = (id: string, role: WorkerRole, prefillTokens = 0, decodeBlocks = 0): WorkerView => ({
  id,
  url: `http://${id}`,
  models: ['m'],
  role,
  labels: {},
  load: {
    inflightRequests: 0,
    prefillRequests: prefillTokens > 0 ? 1 : 0,
    prefillTokens,
    decodeRequests: 0,
    decodeBlocks,
  },
});
const ctx = (promptTokens: number): RouteContext => ({
  requestId: 'r',
  model: 'm',
  path: '/v1/completions',
  headers: {},
  sessionKey: undefined,
  promptTokens,
  blocks: {
    tokenCount: promptTokens,
    blockSize: 16,
    hashes: Array.from({ length: Math.floor(promptTokens / 16) }, (_, i) => BigInt(i + 1)),
  },
  random: () => 0.5,
  now: () => 0,
});
/** `d1` holds the first 200 blocks (3200 tokens) of every prompt. */
const matcher: PrefixMatcher = {
  match: (h) => new Map([['d1', { blocks: Math.min(200, h.length), gpuBlocks: Math.min(200, h.length) }]]),
};
const log = { warn() {} } as never;
const strategy = createKvStrategy({}, { index: matcher, blockSize: 16, log });
const fleet = [worker('p0', 'prefill'), worker('p1', 'prefill', 5000), worker('d0', 'decode'), worker('d1', 'decode')];
const plan = (promptTokens: number, config: Record<string, unknown> = {}, candidates = fleet) =>
  decide({
    ctx: ctx(promptTokens),
    strategy,
    candidates,
    config: disaggConfigSchema.parse(config),
    matcher,
    blockSize: 16,
  });

t.test('the threshold on uncached prefill decides the path', async (t) => {
  const short = plan(500, { minUncachedTokens: 1024 });
  t.equal(short.path, 'aggregated');
  t.equal(short.uncachedTokens, 500 - 31 * 16, "d1 holds the prompt's full blocks: only the tail is uncached");
  t.match(short.reason, /< minUncachedTokens 1024/);

  const long = plan(8000, { minUncachedTokens: 1024 });
  t.equal(long.path, 'disaggregated');
  t.equal(long.aggregated.id, 'd1', 'the aggregated choice is where the prefix is cached');
  t.equal(long.uncachedTokens, 8000 - 3200, 'uncached = prompt − overlap on that decode worker');
  t.equal(long.prefill?.id, 'p0', 'the prefill worker with no queue');
  t.equal(long.decode?.id, 'd1', 'the decode worker with less to transfer');

  // A prompt mostly cached on the decode worker is not worth a second leg, however long.
  t.equal(plan(3300, { minUncachedTokens: 1024 }).path, 'aggregated');
  t.equal(plan(3300, { minUncachedTokens: 50 }).path, 'disaggregated', 'a lower threshold takes it');
  t.equal(plan(100, { mode: 'always' }).path, 'disaggregated', 'mode always ignores the threshold');
});

t.test('saturated or missing prefill workers keep requests aggregated', async (t) => {
  const busy = [worker('p0', 'prefill', 40_000), worker('p1', 'prefill', 50_000), worker('d0', 'decode')];
  const s = plan(8000, {}, busy);
  t.equal(s.path, 'aggregated');
  t.match(s.reason, /saturated/);
  t.equal(s.prefillQueueTokens, 40_000);
  t.equal(plan(8000, { maxPrefillQueueTokens: 100_000 }, busy).path, 'disaggregated');
  const none = plan(8000, {}, [worker('d0', 'decode'), worker('b0', 'both')]);
  t.equal(none.path, 'aggregated');
  t.match(none.reason, /no prefill worker/);
  const onlyPrefill = plan(8000, {}, [worker('p0', 'prefill')]);
  t.equal(onlyPrefill.aggregated.id, 'p0', 'with no decode-capable worker left, a prefill worker serves it whole');
});

t.test('the decode worker is chosen by decode load, with transfer size as a lesser term', async (t) => {
  const loaded = [worker('p0', 'prefill'), worker('d1', 'decode', 0, 5000), worker('d0', 'decode', 0, 10)];
  const p = plan(8000, {}, loaded);
  t.equal(p.path, 'disaggregated');
  t.equal(p.decode?.id, 'd0', 'd1 caches more of the prompt but is far busier decoding');
});
