import t from 'tap';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { loadConfigFile, parseConfig } from '../../config/load.js';
import { CLI } from '../fixtures/processes.js';
import { writeConfig } from '../fixtures/gateway.js';

const worker = (id: string, url = 'http://127.0.0.1:9001') => ({ id, url, models: ['m'] });
const serve = (file: string, env: NodeJS.ProcessEnv = {}) =>
  spawnSync(process.execPath, [CLI, 'serve', '--config', file], {
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 20_000,
  });

t.test('defaults fill every section', async (t) => {
  const c = parseConfig({ fleet: { workers: [worker('a')] } }, 'inline', {});
  t.equal(c.server.port, 8080);
  t.equal(c.admin.host, '127.0.0.1');
  t.equal(c.admin.port, 8081);
  t.equal(c.routing.strategy, 'least-load');
  t.equal(c.routing.sessionHeader, 'x-session-id');
  t.equal(c.upstream.headersTimeoutMs, 600_000, 'no 300 s cut-off for long generations');
  t.equal(c.fleet.workers[0]!.role, 'both');
});

t.test('environment overrides the file, and is validated too', async (t) => {
  const c = parseConfig({ fleet: { workers: [worker('a')] } }, 'inline', {
    KVGATE_PORT: '9999',
    KVGATE_STRATEGY: 'round-robin',
  });
  t.equal(c.server.port, 9999);
  t.equal(c.routing.strategy, 'round-robin');
  t.throws(
    () => parseConfig({ fleet: { workers: [worker('a')] } }, 'inline', { KVGATE_PORT: 'eighty' }),
    /KVGATE_PORT must be an integer/,
  );
});

const bad: [string, unknown, RegExp][] = [
  [
    'an unknown key',
    { fleet: { workers: [worker('a')] }, sever: {} },
    /kvgate\.yaml: \(top level\): unknown key 'sever'/,
  ],
  [
    'an unknown nested key',
    { fleet: { workers: [{ ...worker('a'), modle: 'x' }] } },
    /fleet\.workers\[0\]: unknown key 'modle'/,
  ],
  [
    'a bad URL',
    { fleet: { workers: [worker('a', 'not a url')] } },
    /fleet\.workers\[0\]\.url: must be an http\(s\) URL/,
  ],
  [
    'a duplicate worker id',
    { fleet: { workers: [worker('a'), worker('a', 'http://127.0.0.1:9002')] } },
    /fleet\.workers\[1\]\.id: duplicate worker id 'a'/,
  ],
  [
    'an unknown strategy',
    { fleet: { workers: [worker('a')] }, routing: { strategy: 'fastest' } },
    /routing\.strategy: unknown strategy 'fastest'/,
  ],
  [
    'bad strategy params',
    { fleet: { workers: [worker('a')] }, routing: { strategy: 'session', params: { virtualNodes: 0 } } },
    /routing\.params\.virtualNodes: /,
  ],
  ['no workers', { fleet: { workers: [] } }, /fleet\.workers: /],
];
for (const [what, config, message] of bad) {
  t.test(`${what} is one line naming the file and key, exit 2`, async (t) => {
    const file = writeConfig(t.teardown.bind(t), config);
    t.throws(() => loadConfigFile(file, {}), message);
    const r = serve(file);
    t.equal(r.status, 2, r.stderr);
    t.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    t.match(r.stderr, message);
  });
}

t.test('invalid YAML names the line', async (t) => {
  const file = writeConfig(t.teardown.bind(t), 'fleet:\n  workers: [\n');
  const r = serve(file);
  t.equal(r.status, 2);
  t.match(r.stderr, /invalid YAML/);
});

t.test('a missing file and a missing --config are one-line errors', async (t) => {
  const r = serve('/nonexistent/kvgate.yaml');
  t.equal(r.status, 2);
  t.match(r.stderr, /cannot read config file \/nonexistent\/kvgate\.yaml: ENOENT/);
  const none = spawnSync(process.execPath, [CLI, 'serve'], {
    encoding: 'utf8',
    env: { ...process.env, KVGATE_CONFIG: '' },
  });
  t.equal(none.status, 2);
  t.match(none.stderr, /--config FILE is required/);
});

t.test('every example config is valid', async (t) => {
  const dir = new URL('../../config/examples/', import.meta.url).pathname;
  const files = readdirSync(dir).filter((f) => f.endsWith('.yaml'));
  t.ok(files.length >= 2);
  for (const f of files) t.doesNotThrow(() => loadConfigFile(dir + f, {}), f);
});
