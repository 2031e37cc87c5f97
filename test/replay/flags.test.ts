import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FLEET_DEFAULTS, parseReplayFlags } from '../../bench/replay/replay.js';

const trace = join(t.testdir(), 'tiny_trace.jsonl');
writeFileSync(trace, '{"timestamp": 0, "input_length": 600, "output_length": 4, "hash_ids": [0, 1]}\n');

t.test('replay flags: defaults, overrides, one clear error per bad value', async (t) => {
  const d = parseReplayFlags(['--trace', trace]);
  t.same(d.fleet, FLEET_DEFAULTS);
  t.equal(d.fleet.speedup, 25);
  t.equal(d.fleet.streamInterval, 16, 'workers stream 16 tokens per chunk unless told');
  t.equal(d.name, 'tiny');
  const o = parseReplayFlags(['--trace', trace, '--stream-interval', '1', '--speedup', '5', '--strategies', 'kv, round-robin', '--params', '{"kv":{"reuseCredit":3}}']);
  t.equal(o.fleet.streamInterval, 1);
  t.equal(o.fleet.speedup, 5);
  t.same(o.strategies, ['kv', 'round-robin']);
  t.same(o.params, { kv: { reuseCredit: 3 } });
  t.throws(() => parseReplayFlags(['--trace', trace, '--stream-interval', '0']), /--stream-interval must be an integer >= 1, got 0/);
  t.throws(() => parseReplayFlags(['--trace', trace, '--stream-interval', '2.5']), /--stream-interval must be an integer/);
  t.throws(() => parseReplayFlags(['--trace', trace, '--speedup', '0']), /--speedup must be a number >= 0.001/);
  t.throws(() => parseReplayFlags(['--trace', trace, '--params', '{nope']), /--params must be JSON/);
  t.throws(() => parseReplayFlags(['--trace', join(t.testdir(), 'missing.jsonl')]), /no such file/);
});
