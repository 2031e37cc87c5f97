import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';

/** A bad command-line value: the benchmark prints its message as one line and exits 2. */
export class UsageError extends Error {}

/**
 * `--<name>` given as a JSON object (strategy parameters); {} when absent.
 * `example` is shown in the error, so the user sees the expected shape.
 */
export function jsonObjectFlag(name: string, raw: string | undefined, example: string): Record<string, unknown> {
  if (raw === undefined) return {};
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    v = undefined;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new UsageError(`--${name} must be a JSON object such as '${example}', got ${raw}`);
  return v as Record<string, unknown>;
}

/** The repository root (where package.json is), from source or from dist/ alike. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('kvgate: cannot find the repository root (no package.json above bench/lib)');
    dir = up;
  }
  return dir;
}

/** Shared traces live beside the repository, not in it: `../shared/traces/` from its root. */
export function sharedTrace(relative: string): string {
  return resolve(repoRoot(), '..', 'shared', 'traces', relative);
}

type HelpOptions = Record<string, { type: 'string' | 'boolean'; default?: string | boolean | string[] | boolean[] }>;

/**
 * `parseArgs`, but `--help`/`-h` first prints `summary` and every flag (with its
 * default, when parseArgs knows it) and exits 0, before anything starts.
 */
export function parseBenchFlags<T extends ParseArgsConfig>(
  summary: string,
  config: T,
): ReturnType<typeof parseArgs<T>> {
  const args = config.args ?? process.argv.slice(2);
  if (args.includes('--help') || args.includes('-h')) {
    const options = (config.options ?? {}) as HelpOptions;
    const flags = Object.entries(options).map(([name, o]) => {
      const value = o.type === 'boolean' ? '' : ' <value>';
      const def = o.default === undefined ? '' : `  (default ${String(o.default)})`;
      return `  --${name}${value}${def}`;
    });
    process.stdout.write(`${summary.trim()}\n\nFlags:\n${flags.join('\n')}\n  --help  this text\n`);
    process.exit(0);
  }
  try {
    return parseArgs(config);
  } catch (err) {
    // An unknown or malformed flag: one line naming it, not a stack trace.
    const code = (err as NodeJS.ErrnoException).code;
    if (typeof code !== 'string' || !code.startsWith('ERR_PARSE_ARGS_')) throw err;
    process.stderr.write(`${(err as Error).message} (--help lists the flags)\n`);
    process.exit(2);
  }
}
