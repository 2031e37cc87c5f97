import t from 'tap';
import { spawnSync } from 'node:child_process';
import { parseConfig } from '../../../config/load.js';
import { CLI } from '../../fixtures/processes.js';
import { writeConfig } from '../../fixtures/gateway.js';

const workers = [
  { id: 'a', url: 'http://127.0.0.1:9001', models: ['m'], labels: { gpu: 'a100' } },
  { id: 'b', url: 'http://127.0.0.1:9002', models: ['m'], labels: { gpu: 'h100' } },
];
const config = (routing: unknown) => ({ fleet: { workers }, routing });
const arms = [
  { name: 'kv', strategy: 'kv' },
  { name: 'rr', strategy: 'round-robin' },
];

t.test('a plain routing.strategy config still works, and policies get defaults', async (t) => {
  const c = parseConfig(config({ strategy: 'round-robin' }), 'inline', {});
  t.equal(c.routing.strategy, 'round-robin');
  t.same(c.routing.policies, []);
  t.same(c.routing.experiments, []);
  t.same(c.routing.overrides, { strategyHeader: false, workerHeader: false, session: true });
  const e = parseConfig(
    config({ experiments: [{ name: 'ab', arms, stickyBy: { header: 'X-User-Id' } }] }),
    'inline',
    {},
  );
  t.same(e.routing.experiments[0]!.stickyBy, { header: 'x-user-id' });
  t.equal(e.routing.experiments[0]!.arms[0]!.weight, 1);
  t.same(
    parseConfig(config({ experiments: [{ name: 'ab', arms }] }), 'inline', {}).routing.experiments[0]!.stickyBy,
    'session',
  );
});

const bad: [string, unknown, RegExp][] = [
  [
    'an unknown policy strategy',
    { policies: [{ strategy: 'fastest' }] },
    /^kvgate: f\.yaml: routing\.policies\[0\]\.strategy: unknown strategy 'fastest' \(known: /,
  ],
  [
    'bad policy params',
    { policies: [{ strategy: 'session', params: { virtualNodes: 0 } }] },
    /^kvgate: f\.yaml: routing\.policies\[0\]\.params\.virtualNodes: /,
  ],
  [
    'params without a strategy',
    { policies: [{ params: { a: 1 } }] },
    /^kvgate: f\.yaml: routing\.policies\[0\]\.params: params need a strategy/,
  ],
  [
    'a bad regex',
    { policies: [{ match: { headers: { 'x-user': { regex: '([a-z' } } }, strategy: 'random' }] },
    /^kvgate: f\.yaml: routing\.policies\[0\]\.match\.headers\.x-user\.regex: invalid regular expression/,
  ],
  [
    'an unknown pool',
    { policies: [{ strategy: 'random', pool: 'gpu' }] },
    /^kvgate: f\.yaml: routing\.policies\[0\]\.pool: unknown pool 'gpu' \(no routing\.pools are defined\)/,
  ],
  [
    'a pool with both selectors',
    { pools: { p: { labels: { a: 'b' }, workers: ['a'] } } },
    /^kvgate: f\.yaml: routing\.pools\.p: a pool needs exactly one of labels or workers/,
  ],
  [
    'an inverted length range',
    { policies: [{ match: { promptTokens: { min: 9, max: 1 } } }] },
    /routing\.policies\[0\]\.match\.promptTokens: min must not exceed max/,
  ],
  [
    'an unknown arm strategy',
    { experiments: [{ name: 'ab', arms: [arms[0], { name: 'x', strategy: 'nope' }] }] },
    /^kvgate: f\.yaml: routing\.experiments\[0\]\.arms\[1\]\.strategy: unknown strategy 'nope'/,
  ],
  [
    'bad arm params',
    { experiments: [{ name: 'ab', arms: [{ name: 'kv', strategy: 'kv', params: { bogus: 1 } }] }] },
    /^kvgate: f\.yaml: routing\.experiments\[0\]\.arms\[0\]\.params: .*'bogus'/,
  ],
  [
    'a zero weight',
    { experiments: [{ name: 'ab', arms: [{ ...arms[0], weight: 0 }] }] },
    /routing\.experiments\[0\]\.arms\[0\]\.weight: /,
  ],
  [
    'duplicate arm names',
    { experiments: [{ name: 'ab', arms: [arms[0], arms[0]] }] },
    /routing\.experiments\[0\]\.arms\[1\]\.name: duplicate arm name 'kv'/,
  ],
  [
    'duplicate experiments',
    {
      experiments: [
        { name: 'ab', arms },
        { name: 'ab', arms },
      ],
    },
    /routing\.experiments\[1\]\.name: duplicate experiment name 'ab'/,
  ],
  [
    'a bad stickyBy',
    { experiments: [{ name: 'ab', arms, stickyBy: 'cookie' }] },
    /routing\.experiments\[0\]\.stickyBy: /,
  ],
  [
    'an unknown shadow strategy',
    { shadow: { sampleRate: 1, strategies: ['kv', 'oracle'] } },
    /^kvgate: f\.yaml: routing\.shadow\.strategies\[1\]: unknown strategy 'oracle'/,
  ],
  [
    'duplicate shadow names',
    { shadow: { strategies: ['kv', { strategy: 'kv', params: {} }] } },
    /routing\.shadow\.strategies\[1\]: duplicate shadow name 'kv'/,
  ],
  [
    'an experiment shadow with bad params',
    { experiments: [{ name: 'ab', arms, shadow: { strategies: [{ strategy: 'dynamo', params: { x: 1 } }] } }] },
    /routing\.experiments\[0\]\.shadow\.strategies\[0\]\.params: /,
  ],
  ['an unknown override', { overrides: { modelHeader: true } }, /routing\.overrides: unknown key 'modelHeader'/],
];
for (const [what, routing, message] of bad) {
  t.test(`${what}: one line naming routing's key`, async (t) => {
    t.throws(() => parseConfig(config(routing), 'f.yaml', {}), message);
  });
}

const serve = (file: string) =>
  spawnSync(process.execPath, [CLI, 'serve', '--config', file, '--port', '0', '--admin-port', '0'], {
    encoding: 'utf8',
    timeout: 20_000,
    env: { ...process.env, KVGATE_LOG_LEVEL: 'warn' },
  });

t.test('kvgate serve: invalid rules exit 2 with one line', async (t) => {
  const cases: [unknown, RegExp][] = [
    [
      config({ policies: [{ match: { headers: { 'x-user': { regex: '(' } } }, strategy: 'random' }] }),
      /^kvgate: .*kvgate\.yaml: routing\.policies\[0\]\.match\.headers\.x-user\.regex: invalid regular expression/,
    ],
    [
      config({ experiments: [{ name: 'ab', arms: [{ name: 'a', strategy: 'warp' }] }] }),
      /^kvgate: .*: routing\.experiments\[0\]\.arms\[0\]\.strategy: unknown strategy 'warp'/,
    ],
    [
      config({ pools: { big: { labels: { gpu: 'b200' } } } }),
      /^kvgate: .*kvgate\.yaml: routing\.pools\.big\.labels: no worker has labels gpu=b200/,
    ],
    [
      config({ overrides: { workerHeader: true } }),
      /^kvgate: .*kvgate\.yaml: routing\.overrides\.workerHeader: needs admin\.token/,
    ],
  ];
  for (const [c, message] of cases) {
    const r = serve(writeConfig(t.teardown.bind(t), c));
    t.equal(r.status, 2, `exit 2 (${r.stderr.trim()})`);
    t.match(r.stderr, message);
    t.equal(r.stderr.trim().split('\n').length, 1, 'one line');
  }
});
