import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { benchNodeArgs } from '../lib/child.js';

/** What a simulated worker announces in its `sim worker ready` log line. */
export interface SimWorkerInfo {
  worker: string;
  url: string;
  kvEvents: string | null;
  kvReplay: string | null;
  blockSize: number;
  kvBlocks: number;
  model: string;
}

export interface SimFleet {
  readonly workers: readonly SimWorkerInfo[];
  /** The first simulator process; `children` lists them all (one unless `processes` asked for more). */
  readonly child: ChildProcess;
  readonly children: readonly ChildProcess[];
  /** SIGTERM, then SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

const CLI = fileURLToPath(new URL('../../gateway/cli/cli.js', import.meta.url));

/**
 * Runs `kvgate sim --workers N ...` as a child process (its own event loop, as a
 * real engine would be) and resolves once every worker has announced itself.
 * The demo and the benchmarks share this, so they drive the same program the tests do.
 */
export async function spawnSimFleet(
  workers: number,
  args: readonly string[] = [],
  options: { timeoutMs?: number; onLog?: (line: string) => void; processes?: number } = {},
): Promise<SimFleet> {
  const processes = Math.max(1, Math.min(options.processes ?? 1, workers));
  if (processes === 1) return spawnSimProcess(workers, args, options);
  // Several processes spread the simulated engines over the machine's cores: one Node thread simulating a
  // whole fleet at 25x speed falls seconds behind its clock on a trace's busy stretches.
  const at = args.indexOf('--id-prefix');
  const prefix = at >= 0 ? args[at + 1]! : 'sim-';
  const rest = at >= 0 ? [...args.slice(0, at), ...args.slice(at + 2)] : [...args];
  if (rest.includes('--base-port') || (rest.includes('--port') && rest[rest.indexOf('--port') + 1] !== '0'))
    throw new Error('spawnSimFleet: several processes need free ports (--port 0)');
  const shares = Array.from({ length: processes }, (_, k) => Math.floor((workers + k) / processes)).reverse();
  const started = await Promise.allSettled(
    shares.map((n, k) => spawnSimProcess(n, [...rest, '--id-prefix', `${prefix}${k}-`], options)),
  );
  const fleets = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    await Promise.all(fleets.map((f) => f.stop()));
    throw failed.reason;
  }
  return {
    workers: fleets.flatMap((f) => f.workers),
    child: fleets[0]!.child,
    children: fleets.map((f) => f.child),
    stop: async (graceMs?: number) => {
      await Promise.all(fleets.map((f) => f.stop(graceMs)));
    },
  };
}

function spawnSimProcess(
  workers: number,
  args: readonly string[],
  options: { timeoutMs?: number; onLog?: (line: string) => void },
): Promise<SimFleet> {
  const child = spawn(process.execPath, [...benchNodeArgs(), CLI, 'sim', '--workers', String(workers), ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, KVGATE_EXIT_WITH_PARENT: '1' },
  });
  const ready: SimWorkerInfo[] = [];
  const tail: string[] = [];
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (graceMs = 3000) => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    }
  };
  return new Promise<SimFleet>((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`simulated fleet not ready after ${options.timeoutMs ?? 30_000} ms:\n${tail.join('\n')}`));
    }, options.timeoutMs ?? 30_000);
    const onLine = (line: string) => {
      options.onLog?.(line);
      tail.push(line);
      if (tail.length > 20) tail.shift();
      if (!line.includes('"sim worker ready"')) return;
      ready.push(JSON.parse(line) as SimWorkerInfo);
      if (ready.length === workers) {
        clearTimeout(timer);
        resolve({
          workers: ready.sort((a, b) => a.worker.localeCompare(b.worker, 'en', { numeric: true })),
          child,
          children: [child],
          stop,
        });
      }
    };
    createInterface({ input: child.stdout }).on('line', onLine);
    createInterface({ input: child.stderr }).on('line', onLine);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`kvgate sim exited (${code}) before it was ready:\n${tail.join('\n')}`));
    });
  });
}
