import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { jsonObjectFlag, UsageError } from '../../../bench/lib/flags.js';
import { FLEET_DEFAULTS, parseReplayFlags } from '../../../bench/replay/replay.js';

const trace = join(t.testdir(), 'tiny_trace.jsonl');
writeFileSync(trace, '{"timestamp": 0, "input_length": 600, "output_length": 4, "hash_ids": [0, 1]}\n');

t.test('replay flags: defaults, overrides, one clear error per bad value', async (t) => {
  const d = parseReplayFlags(['--trace', trace]);
  t.same(d.fleet, FLEET_DEFAULTS);
  t.equal(d.fleet.speedup, 25);
  t.equal(d.fleet.streamInterval, 16, 'workers stream 16 tokens per chunk unless told');
  t.equal(d.name, 'tiny');
  const o = parseReplayFlags([
    '--trace',
    trace,
    '--stream-interval',
    '1',
    '--speedup',
    '5',
    '--strategies',
    'kv, round-robin',
    '--params',
    '{"kv":{"reuseCredit":3}}',
  ]);
  t.equal(o.fleet.streamInterval, 1);
  t.equal(o.fleet.speedup, 5);
  t.same(o.strategies, ['kv', 'round-robin']);
  t.same(o.params, { kv: { reuseCredit: 3 } });
  t.throws(
    () => parseReplayFlags(['--trace', trace, '--stream-interval', '0']),
    /--stream-interval must be an integer >= 1, got 0/,
  );
  t.throws(
    () => parseReplayFlags(['--trace', trace, '--stream-interval', '2.5']),
    /--stream-interval must be an integer/,
  );
  t.throws(() => parseReplayFlags(['--trace', trace, '--speedup', '0']), /--speedup must be a number >= 0.001/);
  t.throws(() => parseReplayFlags(['--trace', trace, '--params', '{nope']), /--params must be a JSON object/);
  t.throws(() => parseReplayFlags(['--trace', trace, '--params', '[1]']), /--params must be a JSON object/);
  t.throws(() => parseReplayFlags(['--trace', join(t.testdir(), 'missing.jsonl')]), /no such file/);
});

t.test('jsonObjectFlag: absent is {}, an object passes, anything else is one clear error', async (t) => {
  t.same(jsonObjectFlag('params', undefined, '{}'), {});
  t.same(jsonObjectFlag('params', '{"reuseCredit":3}', '{}'), { reuseCredit: 3 });
  for (const bad of ['{nope', '3', 'null', '"kv"', '[]']) {
    t.throws(
      () => jsonObjectFlag('params', bad, '{"reuseCredit":3}'),
      new UsageError(`--params must be a JSON object such as '{"reuseCredit":3}', got ${bad}`),
    );
  }
});

t.test('fault and replicas benches refuse bad --params in one line, before starting anything', async (t) => {
  for (const script of ['fault-bench.js', 'replicas-bench.js']) {
    const r = spawnSync(
      process.execPath,
      [fileURLToPath(new URL(`../../../dist/bench/${script}`, import.meta.url)), '--params', '{bad'],
      { encoding: 'utf8', timeout: 20_000 },
    );
    t.equal(r.status, 2, `${script} exits 2`);
    t.match(
      r.stderr,
      /^[\w:-]+: --params must be a JSON object such as '\{"reuseCredit":3\}', got \{bad\n$/,
      `${script}: one line`,
    );
  }
});
