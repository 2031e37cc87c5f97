import t from 'tap';
import { spawnSync } from 'node:child_process';
import { CLI } from '../../fixtures/processes.js';

const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

t.test('top-level help lists every command', async (t) => {
  const r = run('--help');
  t.equal(r.status, 0);
  for (const name of ['serve', 'sim', 'demo']) t.match(r.stdout, new RegExp(`^  ${name}\\b`, 'm'));
});

t.test('an unknown command is one line on stderr and exit 2', async (t) => {
  const r = run('frobnicate');
  t.equal(r.status, 2);
  t.equal(r.stderr.trim().split('\n').length, 1);
  t.match(r.stderr, /unknown command 'frobnicate'/);
});

for (const command of ['sim', 'serve', 'demo']) {
  t.test(`${command}: --help prints usage, a bad flag exits 2 with one line`, async (t) => {
    const help = run(command, '--help');
    t.equal(help.status, 0);
    t.match(help.stdout, /usage: kvgate/);
    const bad = run(command, '--no-such-flag');
    t.equal(bad.status, 2);
    t.equal(bad.stderr.trim().split('\n').length, 1, bad.stderr);
    t.match(bad.stderr, new RegExp(`^kvgate ${command}: `));
  });
}

t.test('with KVGATE_EXIT_WITH_PARENT, a child dies with its harness, even a SIGKILLed one', async (t) => {
  const { spawn } = await import('node:child_process');
  // The harness spawns `kvgate sim`, prints its pid once ready, then waits to be killed.
  const harness = spawn(
    process.execPath,
    [
      '-e',
      `
    const { spawn } = require('node:child_process');
    const c = spawn(process.execPath, [${JSON.stringify(CLI)}, 'sim', '--port', '0'], { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, KVGATE_EXIT_WITH_PARENT: '1' } });
    c.stdout.on('data', (d) => { if (String(d).includes('sim worker ready')) console.log('CHILD ' + c.pid); });
  `,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const pid = await new Promise<number>((resolve) =>
    harness.stdout.on('data', (d: Buffer) => {
      const m = /CHILD (\d+)/.exec(String(d));
      if (m) resolve(Number(m[1]));
    }),
  );
  const alive = (p: number) => {
    try {
      process.kill(p, 0);
      return true;
    } catch {
      return false;
    }
  };
  t.ok(alive(pid), 'the simulator runs');
  harness.kill('SIGKILL');
  const deadline = Date.now() + 10_000;
  while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  t.notOk(alive(pid), 'and is gone once its harness died');
});
