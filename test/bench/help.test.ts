import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import t from 'tap';

// Every bench script answers --help before it starts anything, and says where its trace comes from.
const SCRIPTS = [
  'agentic-bench',
  'disagg-bench',
  'fault-bench',
  'index-bench',
  'proxy-bench',
  'proxy-floor',
  'replicas-bench',
  'replicas-decisions',
  'route-bench',
  'tokenize-bench',
  'replay/replay',
  'replay/sweep',
  'requery-bench',
  'replay/tenants',
];
const TAKES_TRACE = new Set([
  'disagg-bench',
  'index-bench',
  'replicas-bench',
  'replay/replay',
  'replay/sweep',
  'replay/tenants',
]);

for (const script of SCRIPTS) {
  t.test(`${script} --help`, async (t) => {
    const r = spawnSync(process.execPath, [`dist/bench/${script}.js`, '--help'], { encoding: 'utf8', timeout: 30_000 });
    t.equal(r.status, 0, r.stderr);
    t.match(r.stdout, /usage/i);
    if (TAKES_TRACE.has(script)) t.match(r.stdout, /\.\.\/shared\/traces\/.* from the repository root/);
  });
}

t.test('an unknown flag is one line naming it, exit 2, before anything starts', (t) => {
  for (const script of SCRIPTS.filter((s) => s !== 'proxy-floor')) {
    const r = spawnSync(process.execPath, [`dist/bench/${script}.js`, '--no-such-flag'], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    t.equal(r.status, 2, `${script}: ${r.stderr}`);
    t.match(r.stderr.trim(), /^Unknown option '--no-such-flag' \(--help lists the flags\)$/, script);
  }
  t.end();
});

t.test('bench:tenants: a bad --repeat is one line naming it, exit 2, before anything starts', (t) => {
  for (const bad of ['0', 'twice']) {
    const r = spawnSync(process.execPath, ['dist/bench/replay/tenants.js', '--repeat', bad], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    t.equal(r.status, 2, r.stderr);
    t.equal(r.stderr.trim(), `bench:tenants: --repeat must be a number >= 1, got ${bad}`);
  }
  t.end();
});

t.test('the default trace is resolved beside the repository, not at a machine path', async (t) => {
  const { DEFAULT_TRACE } = await import('../../bench/replay/replay.js');
  t.match(DEFAULT_TRACE, /[/\\]shared[/\\]traces[/\\]mooncake[/\\]conversation_trace\.jsonl$/);
  t.equal(DEFAULT_TRACE, resolve(process.cwd(), '../shared/traces/mooncake/conversation_trace.jsonl'));
});
