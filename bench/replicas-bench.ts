import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { stringify } from 'yaml';
import { markdownTable, procCpuS, type ReadyChild } from './lib/child.js';
import { jsonObjectFlag, parseBenchFlags, UsageError } from './lib/flags.js';
import { replay, type RequestResult } from './replay/client.js';
import { DEFAULT_TRACE, FLEET_DEFAULTS } from './replay/replay.js';
import { benchGatewayConfig, MODEL, simArgs, startBenchGateway, type FleetShape } from './replay/run.js';
import { summarise, type StrategySummary, type WorkerStats } from './replay/summary.js';
import { describeTrace, readTrace, upperBound, type TraceRequest } from './replay/trace.js';
import { spawnSimFleet } from './sim/spawn.js';

const HELP = `What running N gateway replicas costs: one simulated fleet, N kvgate serve processes, the trace
dealt round-robin to them; mean TTFT and prefix-cache hit rate per N (--share-load needs nats-server).
Usage: node dist/bench/replicas-bench.js [flags]   (--params is a JSON object of strategy parameters)
The trace defaults to ../shared/traces/mooncake/conversation_trace.jsonl from the repository root.`;

/**
 * What running several gateway replicas costs (issue 9, "Scaling out"). Each
 * replica subscribes to every worker's KV events, so their indexes agree; only
 * the in-flight load each one sees is its own share. For N = 1, 2, 4: one fresh
 * simulated fleet, N `kvgate serve` processes in front of it, the trace's
 * requests dealt round-robin to them (request i to replica i mod N, each on the
 * trace's own schedule), then mean TTFT and the fleet's prefix-cache hit rate.
 *
 * With `--share-load` a `nats-server` (on PATH) is started per run and the
 * replicas share their in-flight load through it (gateway/fleet/load-sharing.ts).
 *
 *   node dist/bench/replicas-bench.js [--trace FILE] [--limit 1000] [--replicas 1,2,4] [--idle 4] [--workers 4] [--strategy kv] [--speedup 25] [--share-load [--share-interval 100] [--order-decisions]] [--params '{"reuseCredit":3}']
 */

interface Row {
  replicas: number;
  label: string;
  summary: StrategySummary;
  perReplica: number[];
  cpuS: { sim: number; gateways: number };
  /** Mean TTFT (s) of the trace's second half: where the fault row's kill bites. */
  secondHalfTtft: number;
  /** Load-sharing NATS messages published per request, all replicas together. */
  messagesPerRequest: number | undefined;
}

/** How a row shares load: not at all, deltas as they happen (+ heartbeat snapshots), or snapshots only. */
interface Sharing {
  publishIntervalMs: number;
  /** `loadSharing.orderDecisions`. */
  ordered: boolean;
  deltas: boolean;
}

/** A `nats-server` on a free loopback port, for `--share-load`. */
async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', () => r()));
  const port = (probe.address() as { port: number }).port;
  await new Promise<void>((r) => probe.close(() => r()));
  return port;
}

/** Messages published to the NATS server so far (its monitoring endpoint's `in_msgs`). */
async function natsPublished(monitor: string): Promise<number> {
  const varz = (await (await request(`${monitor}/varz`)).body.json()) as { in_msgs: number };
  return varz.in_msgs;
}

async function startNats(): Promise<{ url: string; monitor: string; stop: () => Promise<void> }> {
  const port = await freePort();
  const mport = await freePort();
  const child = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-m', String(mport)], {
    stdio: 'ignore',
  });
  const failed = new Promise<never>((_, reject) =>
    child.once('error', (err) =>
      reject(new Error(`cannot start nats-server (install it: apt-get install nats-server): ${err.message}`)),
    ),
  );
  const stop = () =>
    new Promise<void>((r) => {
      if (child.exitCode !== null || child.signalCode !== null) return r();
      child.once('exit', () => r());
      child.kill('SIGTERM');
    });
  for (let i = 0; ; i++) {
    const up = await Promise.race([
      failed,
      new Promise<boolean>((r) => {
        const s = connect(port, '127.0.0.1', () => {
          s.destroy();
          r(true);
        });
        s.on('error', () => r(false));
      }),
    ]);
    if (up) return { url: `nats://127.0.0.1:${port}`, monitor: `http://127.0.0.1:${mport}`, stop };
    if (i > 100) {
      await stop();
      throw new Error('nats-server did not start listening');
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * `idle`: the control run. All N gateways run and subscribe, but every request
 * goes through the first: what the extra replicas cost in CPU alone, without
 * splitting the in-flight load.
 */
async function runReplicas(
  n: number,
  strategy: string,
  params: Record<string, unknown>,
  trace: readonly TraceRequest[],
  fleet: FleetShape,
  idle = false,
  shareLoad?: Sharing,
  kill = false,
): Promise<Row> {
  const sim = await spawnSimFleet(fleet.workers, simArgs(fleet, true), { timeoutMs: 60_000 });
  let nats: Awaited<ReturnType<typeof startNats>> | undefined;
  const tmp = mkdtempSync(join(tmpdir(), 'kvgate-replicas-'));
  const gateways: ReadyChild[] = [];
  try {
    if (shareLoad) nats = await startNats();
    const config = join(tmp, 'kvgate.yaml');
    writeFileSync(
      config,
      stringify(
        benchGatewayConfig(
          sim.workers,
          fleet.blockSize,
          { strategy, params },
          nats && shareLoad
            ? {
                loadSharing: {
                  nats: { servers: [nats.url] },
                  publishIntervalMs: shareLoad.publishIntervalMs,
                  orderDecisions: shareLoad.ordered,
                  staleAfterMs: Math.max(2000, 4 * shareLoad.publishIntervalMs),
                  deltas: shareLoad.deltas,
                },
              }
            : {},
        ),
      ),
    );
    for (let i = 0; i < n; i++) gateways.push(await startBenchGateway(config));
    await new Promise((r) => setTimeout(r, 1000));
    // Replica k gets requests k, k+n, ...; its replay starts late by its first request's offset, so every request keeps its trace time.
    const first = trace[0]!.timestamp;
    const ways = idle ? 1 : n;
    // Fault row: the last replica is killed when the trace is half way; its later requests go round-robin to the others.
    const half = trace[Math.floor(trace.length / 2)]!.timestamp;
    const victim = kill ? n - 1 : -1;
    const schedules: { g: number; reqs: { r: TraceRequest; i: number }[] }[] = [];
    const dealt = trace.map((r, i) => ({ r, i }));
    for (let k = 0; k < ways; k++) {
      const mine = dealt.filter(({ i }) => i % ways === k);
      if (k !== victim) schedules.push({ g: k, reqs: mine });
      else {
        schedules.push({ g: k, reqs: mine.filter(({ r }) => r.timestamp < half) });
        const moved = mine.filter(({ r }) => r.timestamp >= half);
        for (let j = 0; j < n - 1; j++) schedules.push({ g: j, reqs: moved.filter((_, x) => x % (n - 1) === j) });
      }
    }
    if (kill) setTimeout(() => gateways[victim]!.child.kill('SIGKILL'), (half - first) / fleet.speedup - 1).unref();
    const parts = schedules.map(({ g, reqs }) => {
      const delay = reqs.length ? (reqs[0]!.r.timestamp - first) / fleet.speedup : 0;
      return new Promise((r) => setTimeout(r, delay)).then(() =>
        replay({
          url: gateways[g]!.ready.url as string,
          model: MODEL,
          trace: reqs.map((x) => x.r),
          speedup: fleet.speedup,
        }),
      );
    });
    const perPart = await Promise.all(parts);
    const results: RequestResult[] = [];
    perPart.forEach((rs, p) => rs.forEach((r, j) => results.push({ ...r, index: schedules[p]!.reqs[j]!.i })));
    const messages = nats ? await natsPublished(nats.monitor) : undefined;
    const workers: WorkerStats[] = await Promise.all(
      sim.workers.map(async (w) => {
        const s = (await (await request(`${w.url}/sim/stats`)).body.json()) as WorkerStats;
        return {
          id: w.worker,
          prefixQueryTokens: s.prefixQueryTokens,
          prefixHitTokens: s.prefixHitTokens,
          prefillTokensComputed: s.prefillTokensComputed,
          preemptions: s.preemptions,
          evictions: s.evictions,
        };
      }),
    );
    const cpuS = {
      sim: procCpuS(sim.child.pid),
      gateways: gateways.reduce((a, g) => a + (procCpuS(g.child.pid) || 0), 0),
    };
    const late = results.filter((r) => trace[r.index]!.timestamp >= half && r.ok);
    const perGateway = new Array<number>(n).fill(0);
    schedules.forEach(({ g, reqs }) => (perGateway[g]! += reqs.length));
    return {
      replicas: n,
      secondHalfTtft: (late.reduce((a, r) => a + r.ttftMs, 0) / Math.max(1, late.length) / 1000) * fleet.speedup,
      messagesPerRequest: messages === undefined ? undefined : messages / trace.length,
      label: `${idle ? `${n}, all via one (control)` : String(n)}${kill ? ', one killed half way' : ''}${shareLoad ? (shareLoad.deltas ? `, shared load (deltas${shareLoad.ordered ? ', ordered decisions' : ''})` : `, shared load (snapshots ${shareLoad.publishIntervalMs} ms)`) : ''}`,
      cpuS,
      summary: summarise(strategy, results, workers, upperBound(trace, fleet.blockSize), fleet.speedup),
      perReplica: idle ? [trace.length] : perGateway,
    };
  } finally {
    await Promise.all([...gateways.map((g) => g.stop()), sim.stop()]);
    await nats?.stop();
    rmSync(tmp, { recursive: true, force: true });
  }
}

async function main(argv: string[]): Promise<void> {
  const { values } = parseBenchFlags(HELP, {
    args: argv,
    strict: true,
    options: {
      idle: { type: 'string' },
      trace: { type: 'string' },
      limit: { type: 'string' },
      replicas: { type: 'string' },
      workers: { type: 'string' },
      strategy: { type: 'string' },
      speedup: { type: 'string' },
      out: { type: 'string' },
      'share-load': { type: 'boolean' },
      'share-interval': { type: 'string' },
      params: { type: 'string' },
      'share-mode': { type: 'string' },
      'order-decisions': { type: 'boolean' },
      'compare-sharing': { type: 'boolean' },
      kill: { type: 'boolean' },
      'trace-decisions': { type: 'string' },
    },
  });
  const limit = Number(values.limit ?? 1000);
  const replicas = (values.replicas ?? '1,2,4').split(',').map(Number);
  const strategy = values.strategy ?? 'kv';
  const params = jsonObjectFlag('params', values.params, '{"reuseCredit":3}');
  const fleet: FleetShape = {
    ...FLEET_DEFAULTS,
    workers: Number(values.workers ?? 4),
    speedup: Number(values.speedup ?? FLEET_DEFAULTS.speedup),
  };
  if (
    !(limit > 0) ||
    replicas.some((n) => !Number.isInteger(n) || n < 1) ||
    !(fleet.workers >= 1) ||
    !(fleet.speedup > 0)
  )
    throw new Error('bad flags: --limit N, --replicas 1,2,4, --workers N, --speedup X');
  const tracePath = values.trace ?? DEFAULT_TRACE;
  const trace = readTrace(tracePath, limit);
  const shape = describeTrace(trace);
  process.stderr.write(
    `trace ${tracePath}: ${trace.length} requests over ${shape.durationS.toFixed(0)} s, replayed in ~${(shape.durationS / fleet.speedup).toFixed(0)} s per run\n`,
  );
  const shareInterval = Number(values['share-interval'] ?? 100);
  if (!(shareInterval >= 10)) throw new Error('bad flag: --share-interval MS (>= 10)');
  const mode = values['share-mode'] ?? 'deltas';
  if (mode !== 'deltas' && mode !== 'snapshots') throw new Error('bad flag: --share-mode deltas|snapshots');
  const sharing: Sharing = {
    publishIntervalMs: shareInterval,
    deltas: mode === 'deltas',
    ordered: values['order-decisions'] === true,
  };
  const shareLoad = values['share-load'] === true ? sharing : undefined;
  const idle = values.idle === undefined ? [] : values.idle.split(',').map(Number);
  type Plan = { n: number; control: boolean; share: Sharing | undefined; kill: boolean };
  const plans: Plan[] = [];
  for (const n of replicas) {
    if (values['compare-sharing']) plans.push({ n, control: false, share: undefined, kill: false });
    plans.push({ n, control: false, share: values['compare-sharing'] ? sharing : shareLoad, kill: false });
  }
  for (const n of idle) plans.push({ n, control: true, share: shareLoad, kill: false });
  if (values.kill) plans.push({ n: 4, control: false, share: sharing, kill: true });
  const decisions = values['trace-decisions'];
  if (decisions) mkdirSync(decisions, { recursive: true });
  const rows: Row[] = [];
  for (const [i, { n, control, share, kill }] of plans.entries()) {
    // Read by gateway/gateway.ts: each replica appends its load changes to <prefix>-<replica>.jsonl.
    if (decisions)
      process.env.KVGATE_LOAD_TRACE = join(
        decisions,
        `row${i}-n${n}${share ? (share.deltas ? '-deltas' : '-snapshots') : ''}${kill ? '-kill' : ''}`,
      );
    const row = await runReplicas(n, strategy, params, trace, fleet, control, share, kill);
    rows.push(row);
    const s = row.summary;
    process.stderr.write(
      `[${row.label} gateway(s)] cpu s sim ${row.cpuS.sim.toFixed(0)} gateways ${row.cpuS.gateways.toFixed(0)}, TTFT mean ${s.ttft.mean.toFixed(3)} s p90 ${s.ttft.p90.toFixed(3)} s, hit ${(s.hitRate * 100).toFixed(1)}%, failed ${s.failed}, imbalance ${s.prefillImbalance.toFixed(2)}, late p99 ${s.lateness.p99.toFixed(0)} ms\n`,
    );
  }
  const base = rows[0]!.summary;
  const pct = (a: number, b: number) => `${a >= b ? '+' : ''}${(((a - b) / b) * 100).toFixed(1)}%`;
  const table = markdownTable(
    [
      'gateways',
      'requests (per gateway)',
      'failed',
      'TTFT mean (s)',
      'vs 1',
      'TTFT p90 (s)',
      'hit rate',
      'prefill imbalance',
      'client late p99 (ms)',
      'CPU s: sim / gateways',
      'TTFT mean, 2nd half (s)',
      'NATS msgs / request',
    ],
    rows.map(({ label, summary: s, perReplica, cpuS, secondHalfTtft, messagesPerRequest }) => [
      label,
      `${s.requests} (${perReplica.join('/')})`,
      s.failed,
      s.ttft.mean.toFixed(3),
      pct(s.ttft.mean, base.ttft.mean),
      s.ttft.p90.toFixed(3),
      `${(s.hitRate * 100).toFixed(1)}%`,
      s.prefillImbalance.toFixed(2),
      s.lateness.p99.toFixed(0),
      `${cpuS.sim.toFixed(0)} / ${cpuS.gateways.toFixed(0)}`,
      secondHalfTtft.toFixed(3),
      messagesPerRequest === undefined ? '-' : messagesPerRequest.toFixed(1),
    ]),
  );
  const md =
    `# Gateway replicas splitting one trace\n\n\`node dist/bench/replicas-bench.js ${argv.join(' ')}\` on ${new Date().toISOString().slice(0, 10)}: ${trace.length} requests of ${tracePath.split('/').pop()}, ` +
    `${fleet.workers} simulated workers (replay fleet defaults, speed-up ${fleet.speedup}), strategy \`${strategy}\`${values.params ? ` with \`${values.params}\`` : ''}, requests dealt round-robin to the gateways${shareLoad || values['compare-sharing'] ? `, in-flight load shared between them over NATS where the row says (\`loadSharing\`, ${mode}, publishIntervalMs ${shareInterval})` : ''}. ` +
    `Times are simulated seconds.\n\n${table}\n`;
  const out = values.out ?? fileURLToPath(new URL('../../bench/results', import.meta.url));
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'replicas.md'), md);
  process.stdout.write(md);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`replicas-bench: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(err instanceof UsageError ? 2 : 1);
  });
}
