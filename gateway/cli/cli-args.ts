import { parseArgs, type ParseArgsConfig } from 'node:util';

/** A usage error: the CLI prints its message on one line and exits with code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export interface CommandSpec<O extends NonNullable<ParseArgsConfig['options']>> {
  /** Sub-command name as typed by the user, e.g. `sim`. */
  name: string;
  /** One-line summary shown by `kvgate --help`. */
  summary: string;
  /** Full help text shown by `kvgate <name> --help`. */
  help: string;
  options: O;
}

type Values<O extends NonNullable<ParseArgsConfig['options']>> = ReturnType<
  typeof parseArgs<{ options: O; strict: true; allowPositionals: false }>
>['values'];

/**
 * Parses flags strictly: an unknown flag, a missing value or a stray positional
 * becomes a UsageError naming the command, so every sub-command fails the same way.
 * Returns null when `--help` was asked for (the help has already been printed).
 */
export function parseFlags<O extends NonNullable<ParseArgsConfig['options']>>(
  spec: CommandSpec<O>,
  argv: string[],
): Values<O> | null {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(spec.help.trimEnd() + '\n');
    return null;
  }
  try {
    return parseArgs({ args: argv, options: spec.options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new UsageError(
      `kvgate ${spec.name}: ${(err as Error).message.split('\n')[0]} (see kvgate ${spec.name} --help)`,
    );
  }
}

/** Reads an integer flag, rejecting junk such as `--workers 4x` with a UsageError. */
export function intFlag(
  command: string,
  flag: string,
  raw: string | undefined,
  fallback: number,
  min = 0,
  max = Number.MAX_SAFE_INTEGER,
): number {
  if (raw === undefined) return fallback;
  if (!/^-?\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`;
    throw new UsageError(`kvgate ${command}: --${flag} must be an integer ${range}, got '${raw}'`);
  }
  return Number(raw);
}

/** Reads a number flag (decimals allowed), rejecting junk with a UsageError. */
export function numberFlag(command: string, flag: string, raw: string | undefined, fallback: number, min = 0): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(value) || value < min) {
    throw new UsageError(`kvgate ${command}: --${flag} must be a number >= ${min}, got '${raw}'`);
  }
  return value;
}
