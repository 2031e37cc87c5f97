import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { CLI, startCli } from '../../fixtures/processes.js';
import { writeConfig } from '../../fixtures/gateway.js';

// `kvgate serve` is the production path: the simulator and the benches (bench/) are test tools and must
// never be loaded with it. Checked twice: on the compiled module graph, and on what a running gateway loaded.

const DIST = resolve(dirname(CLI), '../..');
const BENCH = join(DIST, 'bench') + '/';

/** Relative specifiers a compiled module imports: static `import ... from`, re-exports, and `import(...)` if asked. */
function importsOf(file: string, dynamic: boolean): string[] {
  const src = readFileSync(file, 'utf8');
  const found = [...src.matchAll(/^\s*(?:import|export)\s[^'";]*?from\s*'(\.{1,2}\/[^']+)'/gm)].map((m) => m[1]!);
  found.push(...[...src.matchAll(/^\s*import\s*'(\.{1,2}\/[^']+)'/gm)].map((m) => m[1]!));
  if (dynamic) found.push(...[...src.matchAll(/\bimport\(\s*'(\.{1,2}\/[^']+)'\s*\)/g)].map((m) => m[1]!));
  return found.map((s) => resolve(dirname(file), s));
}

/** Every compiled file reachable from `entry`, with the path that first reached it. */
function reachable(entry: string, dynamic: boolean): Map<string, string[]> {
  const seen = new Map<string, string[]>([[entry, [entry]]]);
  const queue = [entry];
  while (queue.length > 0) {
    const file = queue.shift()!;
    for (const next of importsOf(file, dynamic)) {
      if (seen.has(next) || !existsSync(next)) continue;
      seen.set(next, [...seen.get(file)!, next]);
      queue.push(next);
    }
  }
  return seen;
}

const rel = (files: string[]) => files.map((f) => f.slice(DIST.length + 1)).join(' -> ');

void t.test('nothing reachable from serve imports bench/, not even lazily', (t) => {
  const graph = reachable(join(DIST, 'gateway/cli/serve.js'), true);
  t.ok(graph.has(join(DIST, 'gateway/gateway.js')), 'the walk follows imports (serve reaches the composition root)');
  t.ok(graph.has(join(DIST, 'gateway/routing/strategies/kv.js')), 'and deeper (the strategies)');
  const bench = [...graph].filter(([f]) => f.startsWith(BENCH));
  t.same(
    bench.map(([, path]) => rel(path)),
    [],
    'no bench module on any import path of serve',
  );
  t.end();
});

void t.test('the cli entry loads bench/ only through the lazy sim and demo commands', (t) => {
  const graph = reachable(CLI, false);
  t.same(
    [...graph].filter(([f]) => f.startsWith(BENCH)).map(([, path]) => rel(path)),
    [],
    'no static import path from the cli reaches bench/',
  );
  const demo = importsOf(join(DIST, 'gateway/cli/demo.js'), false);
  t.notOk(
    demo.some((f) => f.startsWith(BENCH)),
    'demo imports the simulator only when it runs',
  );
  t.end();
});

void t.test('a running kvgate serve has loaded no bench module', async (t) => {
  // A module-resolution hook, registered in the child through NODE_OPTIONS, writes down every file it resolves.
  const dir = mkdtempSync(join(tmpdir(), 'kvgate-loads-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const trace = join(dir, 'loaded.txt');
  writeFileSync(trace, '');
  writeFileSync(
    join(dir, 'hooks.mjs'),
    `import { appendFileSync } from 'node:fs';
export async function resolve(specifier, context, next) {
  const r = await next(specifier, context);
  if (r.url.startsWith('file:')) appendFileSync(${JSON.stringify(trace)}, r.url + '\\n');
  return r;
}
`,
  );
  writeFileSync(
    join(dir, 'register.mjs'),
    `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(join(dir, 'hooks.mjs')).href)});\n`,
  );
  const config = writeConfig(t.teardown.bind(t), {
    server: { host: '127.0.0.1' },
    fleet: {
      health: { intervalMs: 60_000, timeoutMs: 200 },
      // Nobody listens there: the gateway starts all the same, with the worker down.
      workers: [{ id: 'w0', url: 'http://127.0.0.1:9', models: ['m'] }],
    },
    routing: { strategy: 'kv' },
  });
  const serve = startCli(['serve', '--config', config, '--port', '0', '--admin-port', '0'], {
    NODE_OPTIONS: `--import=${pathToFileURL(join(dir, 'register.mjs')).href}`,
  });
  t.teardown(() => serve.stop());
  await serve.waitFor('gateway ready', 1, 30_000);
  const loaded = readFileSync(trace, 'utf8')
    .split('\n')
    .filter((u) => u !== '')
    .map((u) => fileURLToPath(u));
  t.ok(
    loaded.includes(join(DIST, 'gateway/gateway.js')),
    'the hook saw the gateway load (it records the compiled files)',
  );
  t.same(
    loaded.filter((f) => f.startsWith(BENCH)),
    [],
    'no bench module loaded',
  );
  t.equal(await serve.stop(), 0);
});
