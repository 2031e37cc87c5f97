import { spawnSync } from 'node:child_process';
import t from 'tap';
import { loadConfigFile, parseConfig } from '../../../config/load.js';
import { CLI } from '../../fixtures/processes.js';
import { writeConfig } from '../../fixtures/gateway.js';

const fleet = { workers: [{ id: 'a', url: 'http://127.0.0.1:9001', models: ['m'] }] };

t.test('flow control is off by default, with three classes ready', async (t) => {
  const c = parseConfig({ fleet }, 'inline', {});
  t.equal(c.flow.enabled, false);
  t.same(
    c.flow.classes.map((x) => x.name),
    ['critical', 'standard', 'sheddable'],
  );
  t.equal(c.flow.defaultClass, 'standard');
});

const bad: [string, unknown, RegExp][] = [
  [
    'a duplicate class',
    { enabled: true, classes: [{ name: 'gold' }, { name: 'gold' }], defaultClass: 'gold' },
    /flow\.classes\[1\]\.name: duplicate class 'gold'/,
  ],
  [
    'a default class that is not a class',
    { classes: [{ name: 'gold' }, { name: 'bronze' }] },
    /flow\.defaultClass: 'standard' is not a class \(classes: gold, bronze\)/,
  ],
  [
    'a badly named class',
    { classes: [{ name: 'Gold Tier' }], defaultClass: 'Gold Tier' },
    /flow\.classes\[0\]\.name: /,
  ],
  ['no classes', { classes: [] }, /flow\.classes: /],
  ['an unknown fairness scope', { tenants: { fairness: 'tenant' } }, /flow\.tenants\.fairness: /],
  [
    'a fleet-share tolerance below 1',
    { tenants: { fleetShare: { tolerance: 0.5 } } },
    /flow\.tenants\.fleetShare\.tolerance: /,
  ],
  ['a negative TTL', { classes: [{ name: 'standard', ttlMs: -1 }] }, /flow\.classes\[0\]\.ttlMs: /],
  ['an unknown SLO policy', { classes: [{ name: 'standard', onSloMiss: 'panic' }] }, /flow\.classes\[0\]\.onSloMiss: /],
  ['an unknown class key', { classes: [{ name: 'standard', prio: 1 }] }, /flow\.classes\[0\]: unknown key 'prio'/],
  [
    'an API key mapped to an unknown class',
    { apiKeys: { 'sk-12345678': { class: 'vip' } } },
    /flow\.apiKeys\.sk-1\.\.\.\.class: 'vip' is not a class/,
  ],
];
for (const [what, flow, message] of bad) {
  t.test(`${what} is a config error`, async (t) => {
    t.throws(() => parseConfig({ fleet, flow }, 'kvgate.yaml', {}), message);
  });
}

t.test('a bad class stops `kvgate serve` with one line and exit 2', async (t) => {
  const file = writeConfig(t.teardown.bind(t), { fleet, flow: { classes: [{ name: 'x' }, { name: 'x' }] } });
  t.throws(() => loadConfigFile(file, {}), /duplicate class 'x'/);
  const r = spawnSync(process.execPath, [CLI, 'serve', '--config', file], { encoding: 'utf8', timeout: 20_000 });
  t.equal(r.status, 2, r.stderr);
  t.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  t.match(r.stderr, /flow\.classes\[1\]\.name: duplicate class 'x'/);
});
