import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createTcpServer, type AddressInfo, type Server } from 'node:net';
import { ENV_OVERRIDES } from '../../../config/load.js';
import { writeConfig } from '../../fixtures/gateway.js';
import { CLI, startCli, type LogLine, type RunningProcess } from '../../fixtures/processes.js';

// What a new user meets first: every start-up mistake is one line naming what they typed, and exit 2.

/** Runs the CLI to its end (asynchronously: the stub servers of a test live in this process). */
function run(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += String(d)));
    child.stderr.on('data', (d: Buffer) => (stderr += String(d)));
    child.once('close', (status) => resolve({ status, stdout, stderr }));
  });
}

const oneLine = (t: Test, r: { status: number | null; stderr: string }, pattern: RegExp) => {
  t.equal(r.status, 2, r.stderr);
  t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  t.match(r.stderr, pattern);
};

/** A loopback port some other program holds. */
async function occupied(t: Test): Promise<number> {
  const s: Server = createTcpServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => new Promise<void>((r) => s.close(() => r())));
  return (s.address() as AddressInfo).port;
}

/** A port nothing listens on (taken, then released). */
async function refusedPort(): Promise<number> {
  const s = createTcpServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function logged(p: RunningProcess, match: (l: LogLine) => boolean, what: string): Promise<LogLine> {
  const end = Date.now() + 20_000;
  for (;;) {
    const found = p.lines.find(match);
    if (found) return found;
    if (Date.now() > end) throw new Error(`no log line: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const config = (extra: Record<string, unknown> = {}, workers?: unknown[]) => ({
  server: { host: '127.0.0.1', port: 0 },
  admin: { port: 0 },
  fleet: { workers: workers ?? [{ id: 'w0', url: 'http://127.0.0.1:1', models: ['m'] }] },
  ...extra,
});

t.test('kvgate --version prints the package version', async (t) => {
  const { version } = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  for (const flag of ['--version', '-v']) {
    const r = await run([flag]);
    t.equal(r.status, 0);
    t.equal(r.stdout, `kvgate ${version}\n`);
  }
});

t.test('kvgate serve --help lists every environment override', async (t) => {
  const r = await run(['serve', '--help']);
  t.equal(r.status, 0);
  for (const name of ['KVGATE_CONFIG', 'KVGATE_LOG_LEVEL', ...ENV_OVERRIDES.map((o) => o.env)])
    t.match(r.stdout, new RegExp(`^  ${name}\\b`, 'm'), name);
  t.match(r.stdout, /KVGATE_ADMIN_HOST\s+admin\.host/);
  t.match(r.stdout, /KVGATE_ADMIN_TOKEN\s+admin\.token/);
});

t.test('a bad flag value names the flag, not the variable it becomes', async (t) => {
  const file = writeConfig(t.teardown.bind(t), config());
  const [port, adminPort, bogus, env] = await Promise.all([
    run(['serve', '--config', file, '--port', 'abc']),
    run(['serve', '--config', file, '--admin-port', '70000']),
    run(['serve', '--config', file, '--strategy', 'bogus']),
    // Set through the environment, the variable is what is named.
    run(['serve', '--config', file], { KVGATE_PORT: 'abc' }),
  ]);
  oneLine(t, port, /^kvgate serve: --port must be an integer .*'abc'/);
  oneLine(t, adminPort, /^kvgate serve: --admin-port must be/);
  oneLine(t, bogus, /^kvgate serve: --strategy: unknown strategy 'bogus' \(known: .*least-load/);
  t.notMatch(bogus.stderr, /KVGATE_|routing\.strategy/);
  oneLine(t, env, /KVGATE_PORT must be an integer/);
});

t.test('a misspelt worker key is named, with the key it was meant to be', async (t) => {
  const file = writeConfig(t.teardown.bind(t), config({}, [{ id: 'w0', url: 'http://127.0.0.1:1', modles: ['m'] }]));
  oneLine(
    t,
    await run(['serve', '--config', file]),
    /: fleet\.workers\[0\]: unknown key 'modles' \(did you mean 'models'\?\)$/m,
  );
});

t.test('a missing tokenizer directory names the key and the path', async (t) => {
  const file = writeConfig(
    t.teardown.bind(t),
    config({ models: { m: { tokenizer: { type: 'local', dir: '/no/such/tokenizer' } } } }),
  );
  oneLine(
    t,
    await run(['serve', '--config', file]),
    /^kvgate: .*: models\.m\.tokenizer\.dir: no tokenizer\.json in \/no\/such\/tokenizer$/m,
  );
});

t.test('a port in use names the flag, variable or key that asked for it', async (t) => {
  const port = await occupied(t);
  const file = writeConfig(t.teardown.bind(t), config());
  const inUse = `cannot listen on 127\\.0\\.0\\.1:${port}: address already in use`;
  const inFile = writeConfig(t.teardown.bind(t), config({ server: { host: '127.0.0.1', port } }));
  // Independent start-ups: run side by side, as each spends seconds loading on a busy machine.
  const [flag, adminFlag, envVar, key] = await Promise.all([
    run(['serve', '--config', file, '--port', String(port)]),
    run(['serve', '--config', file, '--admin-port', String(port)]),
    run(['serve', '--config', file], { KVGATE_ADMIN_PORT: String(port) }),
    run(['serve', '--config', inFile]),
  ]);
  oneLine(t, flag, new RegExp(`^kvgate serve: --port ${port}: ${inUse}$`, 'm'));
  oneLine(t, adminFlag, new RegExp(`^kvgate serve: --admin-port ${port}: ${inUse}$`, 'm'));
  oneLine(t, envVar, new RegExp(`KVGATE_ADMIN_PORT=${port}: ${inUse}`));
  oneLine(t, key, new RegExp(`^kvgate: ${inFile}: server\\.port: ${inUse}$`, 'm'));
});

t.test('an unreachable worker is logged with which one and why, at start and on each transition', async (t) => {
  let status = 503;
  const answering = createServer((req, res) => res.writeHead(status).end());
  const silent = createServer(() => {}); // accepts, never answers
  for (const s of [answering, silent]) {
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
    t.teardown(() => new Promise<void>((r) => s.close(() => r())).then(() => s.closeAllConnections()));
  }
  const url = (s: typeof answering) => `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
  const file = writeConfig(t.teardown.bind(t), {
    ...config(),
    fleet: {
      health: { intervalMs: 100, timeoutMs: 300, unhealthyThreshold: 1 },
      workers: [
        { id: 'refused', url: `http://127.0.0.1:${await refusedPort()}`, models: ['m'] },
        { id: 'status', url: url(answering), models: ['m'] },
        { id: 'silent', url: url(silent), models: ['m'] },
      ],
    },
  });
  const gw = startCli(['serve', '--config', file]);
  t.teardown(() => gw.stop());
  const start = await gw.waitFor('worker unhealthy', 3, 20_000);
  const why = Object.fromEntries(start.map((l) => [l.worker as string, l.error as string]));
  t.match(why.refused, /^connection refused/);
  t.equal(why.status, 'GET /health answered HTTP 503');
  t.equal(why.silent, 'timed out after 300 ms');
  await gw.waitFor('gateway ready');
  status = 200;
  await logged(gw, (l) => l.msg === 'worker healthy' && l.worker === 'status', 'status back up');
  status = 500;
  const down = await logged(
    gw,
    (l) => l.msg === 'worker unhealthy' && l.worker === 'status' && /500/.test(String(l.error)),
    'status down again',
  );
  t.equal(down.error, 'GET /health answered HTTP 500');
});
