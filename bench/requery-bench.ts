import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { stringify } from 'yaml';
import { markdownTable } from './lib/child.js';
import { parseBenchFlags } from './lib/flags.js';
import { FLEET_DEFAULTS } from './replay/replay.js';
import { benchGatewayConfig, MODEL, simArgs, startBenchGateway } from './replay/run.js';
import { spawnSimFleet } from './sim/spawn.js';

/**
 * k "reconsider" rounds run by the gateway (`kvgate_requery`) against the same
 * k rounds run by the client (k requests, each extending the conversation),
 * on 4 simulated workers behind `kv` routing. Reports wall time and prefill
 * tokens the fleet computed. Writes bench/results/requery.md.
 *
 *   node dist/bench/requery-bench.js [--rounds 4] [--repeats 3]
 */
const { values } = parseBenchFlags(
  `k "reconsider" rounds run by the gateway (kvgate_requery) against the same k rounds run by the client,
on 4 simulated workers behind kv routing: wall time and prefill tokens; writes bench/results/requery.md.
Usage: npm run bench:requery -- [flags]`,
  {
    options: {
      rounds: { type: 'string', default: '4' },
      repeats: { type: 'string', default: '3' },
    },
  },
);
const rounds = Number(values.rounds);
const repeats = Number(values.repeats);
if (!Number.isInteger(rounds) || rounds < 1 || rounds > 16) {
  process.stderr.write(`--rounds must be an integer from 1 to 16, got '${values.rounds}'\n`);
  process.exit(2);
}
if (!Number.isInteger(repeats) || repeats < 1) {
  process.stderr.write(`--repeats must be a positive integer, got '${values.repeats}'\n`);
  process.exit(2);
}
const PROMPT = 'Reconsider your answer. Check it step by step and give your final answer.';
const speedup = 1;

interface Reply {
  choices: { message: { content: string } }[];
}

async function post(url: string, body: unknown): Promise<Reply> {
  const res = await request(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (res.statusCode !== 200) throw new Error(`${res.statusCode}: ${await res.body.text()}`);
  return (await res.body.json()) as Reply;
}

async function main(): Promise<void> {
  const fleet = { ...FLEET_DEFAULTS, workers: 4, speedup };
  const sim = await spawnSimFleet(4, simArgs(fleet, true), { timeoutMs: 120_000 });
  const tmp = mkdtempSync(join(tmpdir(), 'kvgate-requery-'));
  const file = join(tmp, 'kvgate.yaml');
  const config = benchGatewayConfig(sim.workers, fleet.blockSize, { strategy: 'kv' });
  (config.server as Record<string, unknown>).requery = { enabled: true, maxRounds: 16 };
  writeFileSync(file, stringify(config));
  const gateway = await startBenchGateway(file);
  const computed = async () => {
    let n = 0;
    for (const w of sim.workers)
      n += ((await (await request(`${w.url}/sim/stats`)).body.json()) as Record<string, number>).prefillTokensComputed!;
    return n;
  };
  const url = gateway.ready.url as string;
  const rows: (string | number)[][] = [];
  try {
    await new Promise((r) => setTimeout(r, 1000));
    const sums = { gateway: { ms: 0, prefill: 0 }, client: { ms: 0, prefill: 0 } };
    for (let rep = 0; rep < repeats; rep++) {
      // A distinct ~3k-token context per repeat and mode, so neither finds the other's cache.
      const context = (mode: string) =>
        `Document ${rep}-${mode}: ` + Array.from({ length: 600 }, (_, i) => `fact ${i} of ${rep}${mode}.`).join(' ');
      for (const mode of ['gateway', 'client'] as const) {
        const messages: unknown[] = [
          { role: 'system', content: context(mode) },
          { role: 'user', content: 'Summarise the document in one sentence.' },
        ];
        const before = await computed();
        const t0 = performance.now();
        if (mode === 'gateway') {
          await post(url, { model: MODEL, messages, max_tokens: 64, kvgate_requery: { rounds, prompt: PROMPT } });
        } else {
          for (let r = 0; r < rounds; r++) {
            const out = await post(url, { model: MODEL, messages, max_tokens: 64 });
            messages.push(
              { role: 'assistant', content: out.choices[0]!.message.content },
              { role: 'user', content: PROMPT },
            );
          }
        }
        sums[mode].ms += performance.now() - t0;
        sums[mode].prefill += (await computed()) - before;
      }
    }
    for (const mode of ['gateway', 'client'] as const)
      rows.push([
        mode === 'gateway' ? `gateway (kvgate_requery rounds ${rounds})` : `client (${rounds} requests)`,
        (sums[mode].ms / repeats).toFixed(0),
        (sums[mode].prefill / repeats).toFixed(0),
      ]);
  } finally {
    await Promise.all([gateway.stop(), sim.stop()]);
    rmSync(tmp, { recursive: true, force: true });
  }
  const md = `# Re-queries: from the gateway vs from the client (simulator)

Command: \`node dist/bench/requery-bench.js ${process.argv.slice(2).join(' ')}\` — ${new Date().toISOString()}

${rounds} "reconsider" rounds (max_tokens 64 each) over a ~3k-token context, ${repeats} repeats per mode (fresh context each),
4 simulated workers (replay-tool defaults, speed-up ${speedup}), \`kv\` routing, client and gateway on loopback.
Wall time is real (this loaded 2-core machine); prefill tokens are what the workers computed (\`/sim/stats\`).

${markdownTable(['mode', 'wall ms (mean)', 'prefill tokens computed (mean)'], rows)}
`;
  const out = fileURLToPath(new URL('../../bench/results', import.meta.url));
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'requery.md'), md);
  process.stdout.write(md);
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
