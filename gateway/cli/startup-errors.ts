import { StartupError } from '../ops/startup-error.js';
import { UsageError } from './cli-args.js';

export interface Blame {
  /** How the CLI names itself: `kvgate serve`, `kvgate demo`. */
  command: string;
  /** The config file, when there is one. */
  file?: string;
  /** Config key -> the flag (with its value) or environment variable that set it this time. */
  setBy: Record<string, string | undefined>;
  /** A hint per config key, e.g. for a second demo on the same port. */
  hints?: Record<string, string>;
}

/**
 * Turns a start-up failure into the one-line, exit-2 message every other start-up
 * error gives, blaming what the user actually typed: the flag or environment
 * variable when one set the key, else the file and key. Anything else passes through.
 */
export function blameStartup(err: unknown, blame: Blame): unknown {
  if (!(err instanceof StartupError)) return err;
  const hint = blame.hints?.[err.key] ? ` (${blame.hints[err.key]})` : '';
  const by = blame.setBy[err.key];
  if (by !== undefined) return new UsageError(`${blame.command}: ${by}: ${err.message}${hint}`);
  if (blame.file !== undefined) return new UsageError(`kvgate: ${blame.file}: ${err.key}: ${err.message}${hint}`);
  return new UsageError(`${blame.command}: ${err.key}: ${err.message}${hint}`);
}
