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
  readonly child: ChildProcess;
  /** SIGTERM, then SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

const CLI = fileURLToPath(new URL('../../gateway/cli/cli.js', import.meta.url));

/**
 * Runs `kvgate sim --workers N ...` as a child process (its own event loop, as a
 * real engine would be) and resolves once every worker has announced itself.
 * The demo and the benchmarks share this, so they drive the same program the tests do.
 */
export function spawnSimFleet(
  workers: number,
  args: readonly string[] = [],
  options: { timeoutMs?: number; onLog?: (line: string) => void } = {},
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
