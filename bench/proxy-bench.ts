import autocannon, { type Result } from 'autocannon';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { markdownTable, median, spawnUntilReady, treeCpuS } from './lib/child.js';
import { startPeerProxies } from './lib/peer-proxies.js';
import { spawnSimFleet } from './sim/spawn.js';

import { parseBenchFlags } from './lib/flags.js';
const HELP = `Proxy overhead: the same load against a simulated worker directly, through kvgate (round-robin),
and through a bare undici pass-through, interleaved round by round; writes bench/results/proxy-overhead.*.
--baseline-cli adds another kvgate build (its dist/gateway/cli/cli.js) to the rotation, so a change is judged
against the build before it in one run.
Usage: npm run bench:proxy -- [flags]`;

/**
 * Proxy overhead: the same load against (a) a simulated worker directly,
 * (b) kvgate (round-robin) in front of it, (c) a bare undici pass-through
 * (the floor of what a Node proxy can do), and (d) nginx and (e) HAProxy as
 * round-robin reverse proxies when installed. Targets are interleaved round
 * by round so that noise on this shared machine hits all of them alike.
 *
 *   npm run bench:proxy -- [--duration 8] [--rounds 3] [--connections 32]
 */
const { values } = parseBenchFlags(HELP, {
  options: {
    duration: { type: 'string', default: '8' },
    rounds: { type: 'string', default: '3' },
    connections: { type: 'string', default: '32' },
    speedup: { type: 'string', default: '1000' },
    'baseline-cli': { type: 'string', default: '' },
    out: { type: 'string', default: fileURLToPath(new URL('../../bench/results', import.meta.url)) },
  },
});
const duration = Number(values.duration);
const rounds = Number(values.rounds);
const connections = Number(values.connections);
const dist = (p: string) => fileURLToPath(new URL(p, import.meta.url));
const MODEL = 'Qwen/Qwen3-0.6B';

const PROMPT = 'The quick brown fox jumps over the lazy dog';
/** Throughput under load (all connections), and added latency with one connection (no queueing). */
const scenarios = [
  { name: 'completion, non-streaming (8 tokens)', connections, body: { model: MODEL, prompt: PROMPT, max_tokens: 8 } },
  {
    name: 'completion, streaming (8 tokens)',
    connections,
    body: { model: MODEL, prompt: PROMPT, max_tokens: 8, stream: true },
  },
  {
    name: 'one connection, non-streaming (latency)',
    connections: 1,
    body: { model: MODEL, prompt: PROMPT, max_tokens: 8 },
  },
];

async function main(): Promise<void> {
  const sim = await spawnSimFleet(1, ['--port', '0', '--speedup', values.speedup, '--max-num-seqs', '1024']);
  const worker = sim.workers[0]!;
  const tmp = mkdtempSync(join(tmpdir(), 'kvgate-bench-'));
  const config = join(tmp, 'kvgate.yaml');
  writeFileSync(
    config,
    stringify({
      server: { host: '127.0.0.1', port: 0 },
      admin: { port: 0 },
      fleet: { workers: [{ id: worker.worker, url: worker.url, models: [MODEL] }] },
      routing: { strategy: 'round-robin' },
    }),
  );
  const gateway = await spawnUntilReady([dist('../gateway/cli/cli.js'), 'serve', '--config', config], 'gateway ready', {
    KVGATE_LOG_LEVEL: 'info',
  });
  const baseline = values['baseline-cli']
    ? await spawnUntilReady([values['baseline-cli'], 'serve', '--config', config], 'gateway ready', {
        KVGATE_LOG_LEVEL: 'info',
      })
    : undefined;
  const floor = await spawnUntilReady([dist('./proxy-floor.js'), worker.url], 'floor ready');
  const { peers, missing } = await startPeerProxies(tmp, worker.url, (line) => process.stderr.write(`${line}\n`)).catch(
    async (err: unknown) => {
      await Promise.all([gateway.stop(), baseline?.stop(), floor.stop(), sim.stop()]);
      throw err;
    },
  );
  const targets: Record<string, string> = {
    direct: worker.url,
    kvgate: gateway.ready.url as string,
    floor: floor.ready.url as string,
  };
  // Whose CPU a target's requests cost: the worker itself for "direct", else the proxy (nginx: master and worker).
  const pids: Record<string, number | undefined> = {
    direct: sim.child.pid,
    kvgate: gateway.child.pid,
    floor: floor.child.pid,
  };
  if (baseline) {
    targets.baseline = baseline.ready.url as string;
    pids.baseline = baseline.child.pid;
  }
  for (const p of peers) {
    targets[p.name] = p.url;
    pids[p.name] = p.child.pid;
  }
  const results: Record<string, Record<string, Measured[]>> = {};
  try {
    for (const s of scenarios) {
      results[s.name] = Object.fromEntries(Object.keys(targets).map((k) => [k, []]));
      for (let r = 0; r < rounds; r++) {
        for (const [target, base] of Object.entries(targets)) {
          process.stderr.write(`[${s.name}] round ${r + 1}/${rounds}: ${target} ...`);
          const cpuBefore = treeCpuS(pids[target]);
          const res = await autocannon({
            url: `${base}/v1/completions`,
            method: 'POST',
            connections: s.connections,
            duration,
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify(s.body),
          });
          if (res.errors > 0 || res.non2xx > 0)
            throw new Error(`${target}: ${res.errors} errors, ${res.non2xx} non-2xx`);
          const cpuUs = ((treeCpuS(pids[target]) - cpuBefore) * 1e6) / res.requests.total;
          results[s.name]![target]!.push({ ...res, cpuUs });
          process.stderr.write(
            ` ${Math.round(res.requests.average)} req/s, p50 ${res.latency.p50} ms, mean ${res.latency.average} ms, ${cpuUs.toFixed(0)} µs CPU/request\n`,
          );
        }
      }
    }
  } finally {
    await Promise.all([gateway.stop(), baseline?.stop(), floor.stop(), sim.stop(), ...peers.map((p) => p.stop())]);
    rmSync(tmp, { recursive: true, force: true });
  }
  report(results, missing);
}

const LABELS: Record<string, string> = {
  direct: '(a) worker direct',
  kvgate: '(b) kvgate round-robin',
  floor: '(c) bare undici proxy',
  nginx: '(d) nginx round-robin',
  haproxy: '(e) HAProxy round-robin',
  baseline: '(f) kvgate, baseline build',
};

/** One autocannon run, and the CPU the target's processes spent per request meanwhile (µs; NaN off Linux). */
type Measured = Result & { cpuUs: number };

function report(results: Record<string, Record<string, Measured[]>>, missing: string[]): void {
  const rows: (string | number)[][] = [];
  const summary: Record<string, unknown> = {};
  for (const [scenario, byTarget] of Object.entries(results)) {
    const stat = (target: string) => ({
      rps: median(byTarget[target]!.map((r) => r.requests.average)),
      p50: median(byTarget[target]!.map((r) => r.latency.p50)),
      p99: median(byTarget[target]!.map((r) => r.latency.p99)),
      mean: median(byTarget[target]!.map((r) => r.latency.average)),
      cpuUs: median(byTarget[target]!.map((r) => r.cpuUs)),
    });
    // autocannon's latencies are whole milliseconds; with one connection, 1/throughput is the exact time per request.
    const connectionsUsed = scenarios.find((x) => x.name === scenario)!.connections;
    const perRequest = (x: { rps: number }) => (1000 * connectionsUsed) / x.rps;
    const stats = Object.fromEntries(Object.keys(byTarget).map((t) => [t, stat(t)]));
    summary[scenario] = stats;
    for (const [target, s] of Object.entries(stats)) {
      rows.push([
        scenario,
        LABELS[target] ?? target,
        Math.round(s.rps),
        s.p50.toFixed(1),
        s.p99.toFixed(1),
        perRequest(s).toFixed(3),
        s.cpuUs.toFixed(0),
      ]);
    }
    const [a, b, c] = [stats.direct!, stats.kvgate!, stats.floor!];
    rows.push([
      scenario,
      '**b/a, b/c (throughput)**',
      `${(b.rps / a.rps).toFixed(2)}, ${(b.rps / c.rps).toFixed(2)}`,
      `b−a ${(b.p50 - a.p50).toFixed(1)}`,
      `b−a ${(b.p99 - a.p99).toFixed(1)}`,
      `b−a ${(perRequest(b) - perRequest(a)).toFixed(3)}, b−c ${(perRequest(b) - perRequest(c)).toFixed(3)}`,
      `b/c ${(b.cpuUs / c.cpuUs).toFixed(2)}`,
    ]);
    for (const peer of ['nginx', 'haproxy', 'baseline'].filter((p) => stats[p])) {
      const d = stats[peer]!;
      rows.push([
        scenario,
        `**b/${peer} (throughput)**`,
        (b.rps / d.rps).toFixed(2),
        `b−${peer} ${(b.p50 - d.p50).toFixed(1)}`,
        `b−${peer} ${(b.p99 - d.p99).toFixed(1)}`,
        `b−${peer} ${(perRequest(b) - perRequest(d)).toFixed(3)}`,
        `b/${peer} ${(b.cpuUs / d.cpuUs).toFixed(2)}`,
      ]);
    }
  }
  const table = markdownTable(
    ['scenario', 'target', 'req/s (median)', 'p50 ms', 'p99 ms', 'ms per request per connection', 'CPU µs per request'],
    rows,
  );
  const text = `# Proxy overhead

Command: \`npm run bench:proxy -- --duration ${duration} --rounds ${rounds} --connections ${connections} --speedup ${values.speedup}${values['baseline-cli'] ? ` --baseline-cli ${values['baseline-cli']}` : ''}\`
Date: ${new Date().toISOString()}; machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, Node ${process.version}.
Load: autocannon, ${connections} connections (the latency scenario: 1), ${duration} s per target per round, ${rounds} rounds interleaved (a, b, c, ..., a, b, c, ...); medians over rounds.
One simulated worker (\`kvgate sim --speedup ${values.speedup}\`), the gateway and the floor proxy each in their own process; nginx (\`worker_processes 1\`, upstream keepalive, \`proxy_buffering off\`) and HAProxy (\`nbthread 1\`, \`http-reuse always\`) as round-robin reverse proxies to the same worker, each limited to one core like kvgate's one Node thread. All share the machine's cores with autocannon and with other work, so absolute numbers are low and noisy; only the ratios measured side by side mean anything.
"CPU µs per request": user + system CPU of the target's own processes (for (a) the simulated worker itself; for nginx its master and worker) over the requests of the run, from /proc (10 ms ticks): what the proxy costs whatever the machine's contention.
${missing.length ? `\nNot installed, so not measured: ${missing.join(', ')} (\`sudo apt-get install -y ${missing.join(' ')}\`).\n` : ''}
${table}
`;
  mkdirSync(values.out, { recursive: true });
  writeFileSync(join(values.out, 'proxy-overhead.md'), text);
  writeFileSync(
    join(values.out, 'proxy-overhead.json'),
    JSON.stringify({ date: new Date().toISOString(), duration, rounds, connections, summary }, null, 2),
  );
  process.stdout.write(text);
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
