import t from 'tap';
import { spawnSync } from 'node:child_process';
import { CLI } from './fixtures/processes.js';

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
