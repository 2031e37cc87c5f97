import t from 'tap';
import type { RequestResult } from '../../../bench/replay/client.js';
import { renderMarkdown, type ReplayReport } from '../../../bench/replay/report.js';
import {
  distribution,
  gatewayCpuMsPerRequest,
  imbalance,
  percentile,
  summarise,
  type WorkerStats,
} from '../../../bench/replay/summary.js';
import { replaySvg } from '../../../bench/replay/svg.js';
import { upperBound } from '../../../bench/replay/trace.js';

const result = (
  index: number,
  ttftMs: number,
  e2eMs: number,
  outputTokens: number,
  extra: Partial<RequestResult> = {},
): RequestResult => ({
  index,
  ok: true,
  lateMs: index,
  ttftMs,
  e2eMs,
  outputTokens,
  promptTokens: 100,
  cachedTokens: 0,
  worker: index % 2 ? 'w1' : 'w0',
  ...extra,
});

const worker = (id: string, queries: number, hits: number, prefill: number, lostMs?: number): WorkerStats => ({
  id,
  prefixQueryTokens: queries,
  prefixHitTokens: hits,
  prefillTokensComputed: prefill,
  preemptions: 1,
  evictions: 0,
  ...(lostMs === undefined ? {} : { lostMs }),
});

t.test('percentiles interpolate linearly between ranks (NumPy default)', async (t) => {
  const s = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
  t.equal(percentile(s, 0), 1);
  t.equal(percentile(s, 1), 10);
  t.equal(percentile(s, 0.5), 5.5);
  t.equal(percentile(s, 0.9), 9.1);
  t.ok(Math.abs(percentile(s, 0.99) - 9.91) < 1e-12);
  t.equal(percentile([42], 0.99), 42);
  t.ok(Number.isNaN(percentile([], 0.5)));
  t.same(distribution([3, 1, 2]), { mean: 2, p50: 2, p90: 2.8, p99: 2.98 });
  t.equal(imbalance([10, 20, 30]), 1.5);
  t.equal(imbalance([0, 0]), 1, 'nothing to balance');
});

t.test('summarise: simulated seconds, hit rate over the bound, prefill balance, failures', async (t) => {
  const bound = { ...upperBound([]), tokenRate: 0.4 };
  const results = [
    result(0, 100, 1100, 11), // speed-up 10: TTFT 1 s, e2e 11 s, 10 tokens in 10 s
    result(1, 300, 2300, 21), // TTFT 3 s, e2e 23 s, 20 tokens in 20 s
    result(2, 200, 200, 1), // one token: no decode time
    result(3, NaN, 50, 0, { ok: false, error: 'HTTP 503' }),
  ];
  const s = summarise('kv', results, [worker('w0', 1000, 300, 700, 120), worker('w1', 1000, 100, 900)], bound, 10);
  t.equal(s.requests, 4);
  t.equal(s.failed, 1);
  t.equal(s.ttft.mean, 2);
  t.equal(s.ttft.p50, 2);
  t.equal(s.e2e.mean, (11 + 23 + 2) / 3);
  t.equal(s.outputTokPerS, 1, '30 tokens over 30 simulated seconds of decoding');
  t.equal(s.hitRate, 0.2);
  t.equal(s.ofUpperBound, 0.5);
  t.equal(s.prefillTokens, 1600);
  t.equal(s.prefillImbalance, 900 / 800);
  t.equal(s.preemptions, 2);
  t.same(s.perWorker, { w0: 2, w1: 2 });
  t.equal(s.lateness.max, 3);
  t.equal(s.simLostMs, 120, 'the worst engine lag; a worker without the counter counts 0');
  t.equal(s.ttftQuantiles.length, 101);
  t.equal(s.ttftQuantiles[0], 1);
  t.equal(s.ttftQuantiles[100], 3);

  const report: ReplayReport = {
    command: 'npm run bench:replay -- --limit 4',
    date: '2026-01-01T00:00:00Z',
    trace: '/x/tiny_trace.jsonl',
    traceShape: { requests: 4, durationS: 1, meanInput: 100, meanOutput: 8, maxTotal: 120 },
    bound,
    fleet: {
      workers: 2,
      kvBlocks: 100,
      blockSize: 16,
      maxModelLen: 1000,
      maxNumBatchedTokens: 64,
      maxNumSeqs: 8,
      speedup: 10,
      streamInterval: 16,
      timing: { 'prefill-b': 0.1 },
    },
    params: {},
    wallS: 60,
    summaries: [s],
  };
  const md = renderMarkdown(report, 'replay-tiny.svg');
  t.match(md, /\| kv \| 2\.00 \| 2\.00 \|/);
  t.match(md, /20\.0% \| 50\.0% \| 0\.0 \| 1\.13 \| \d+ \| 120 \| n\/a \|/, 'late p99 and sim lag columns');
  t.ok(Number.isNaN(gatewayCpuMsPerRequest(s)), 'no CPU measured: not a number');
  s.cpuS = { client: 1, sim: 2, gateway: 3, gatewayReplay: 0.01 };
  t.equal(gatewayCpuMsPerRequest(s), 2.5, '10 ms of gateway CPU over 4 requests');
  t.match(renderMarkdown(report, 'replay-tiny.svg'), /\| 120 \| 2\.50 \|/, 'gateway CPU ms per request column');
  t.match(md, /stream interval 16/);
  t.match(md, /--prefill-b 0\.1/);
  const svg = replaySvg(report);
  t.match(svg, /^<svg /);
  t.match(svg, /<polyline /);
  t.match(svg, /bound 40\.0%/);
});
