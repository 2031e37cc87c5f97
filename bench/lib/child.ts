import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export interface ReadyChild {
  child: ChildProcess;
  /** The JSON log line that announced readiness. */
  ready: Record<string, unknown>;
  stop(): Promise<void>;
}

/** user + system CPU seconds of a child process, from /proc (Linux); NaN elsewhere. */
export function procCpuS(pid: number | undefined): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return NaN;
  }
}

/** CPU seconds of a process and its direct children (nginx's worker under its master), from /proc; NaN elsewhere. */
export function treeCpuS(pid: number | undefined): number {
  let total = procCpuS(pid);
  if (pid === undefined || Number.isNaN(total)) return total;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // Fields after the command: state, ppid, ...
      const fields = readFileSync(`/proc/${entry}/stat`, 'utf8').split(') ')[1]!.split(' ');
      if (Number(fields[1]) === pid) total += procCpuS(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return total;
}

/**
 * Extra node flags for benchmark children, e.g. `KVGATE_BENCH_NODE_ARGS=--cpu-prof`
 * to profile the gateway and simulators of a run (NODE_OPTIONS refuses --cpu-prof).
 */
export function benchNodeArgs(): string[] {
  return (process.env.KVGATE_BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
}

/** Spawns `node ...args` and resolves with its first JSON log line whose `msg` equals `readyMsg`. */
export function spawnUntilReady(
  args: string[],
  readyMsg: string,
  env: NodeJS.ProcessEnv = {},
  timeoutMs = 30_000,
): Promise<ReadyChild> {
  const child = spawn(process.execPath, [...benchNodeArgs(), ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, KVGATE_EXIT_WITH_PARENT: '1', ...env },
  });
  const tail: string[] = [];
  // KVGATE_BENCH_LOG_DIR keeps every child's output, to find out afterwards why a run went as it did.
  const logDir = process.env.KVGATE_BENCH_LOG_DIR;
  const logFile = logDir ? join(logDir, `${args[1] ?? 'child'}-${child.pid ?? 'x'}.log`) : undefined;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(t);
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`${args.join(' ')}: not ready after ${timeoutMs} ms\n${tail.join('\n')}`));
    }, timeoutMs);
    const onLine = (line: string) => {
      if (logFile) appendFileSync(logFile, line + '\n');
      tail.push(line);
      if (tail.length > 20) tail.shift();
      if (!line.startsWith('{')) return;
      try {
        const parsed = JSON.parse(line) as Record<string, unknown>;
        if (parsed.msg === readyMsg) {
          clearTimeout(timer);
          resolve({ child, ready: parsed, stop });
        }
      } catch {
        /* not a log line */
      }
    };
    createInterface({ input: child.stdout }).on('line', onLine);
    createInterface({ input: child.stderr }).on('line', onLine);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${args.join(' ')} exited (${code}) before ready\n${tail.join('\n')}`));
    });
  });
}

/** Median of a non-empty list. */
export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Markdown table from a header and rows. */
export function markdownTable(header: readonly string[], rows: readonly (readonly (string | number)[])[]): string {
  const line = (cells: readonly (string | number)[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}
