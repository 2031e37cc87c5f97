#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { ConfigError } from '../../config/errors.js';
import { UsageError } from './cli-args.js';

/**
 * The `kvgate` command. Each sub-command lives in its own module and is loaded
 * only when asked for, so `kvgate sim` never pays for the gateway's imports.
 */
interface SubCommand {
  summary: string;
  run(argv: string[]): Promise<void>;
}

const commands: Record<string, SubCommand> = {
  serve: {
    summary: 'run the gateway in front of a fleet described by a config file',
    run: async (argv) => (await import('./serve.js')).serveCommand(argv),
  },
  epp: {
    summary: 'run as the Endpoint Picker of a Gateway API InferencePool (Envoy ext_proc)',
    run: async (argv) => (await import('./epp.js')).eppCommand(argv),
  },
  sim: {
    summary: 'run simulated vLLM workers (OpenAI API, KV events over ZeroMQ)',
    run: async (argv) => (await import('../../bench/sim/cli.js')).simCommand(argv),
  },
  demo: {
    summary: 'start four simulated workers and the gateway in front of them',
    run: async (argv) => (await import('./demo.js')).demoCommand(argv),
  },
};

function topLevelHelp(): string {
  const width = Math.max(...Object.keys(commands).map((name) => name.length));
  const lines = Object.entries(commands).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return `usage: kvgate <command> [flags]\n\ncommands:\n${lines.join('\n')}\n\nkvgate <command> --help shows a command's flags; kvgate --version the version.\n`;
}

/** From package.json, which sits three levels above this file once compiled (dist/gateway/cli/). */
function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

async function main(argv: string[]): Promise<void> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(topLevelHelp());
    return;
  }
  if (name === '--version' || name === '-v' || name === 'version') {
    process.stdout.write(`kvgate ${version()}\n`);
    return;
  }
  const command = commands[name];
  if (!command)
    throw new UsageError(`kvgate: unknown command '${name}' (commands: ${Object.keys(commands).join(', ')})`);
  await command.run(rest);
}

// Test and benchmark harnesses set this and keep our stdin open: when they die,
// even by SIGKILL, the pipe closes and we stop instead of lingering as an orphan.
if (process.env.KVGATE_EXIT_WITH_PARENT === '1') {
  process.stdin.on('end', () => process.kill(process.pid, 'SIGTERM'));
  process.stdin.on('error', () => process.kill(process.pid, 'SIGTERM'));
  process.stdin.resume();
}

/** Exit code 2 for what the user can fix (flags, config); 1 for anything else. */
function exitCode(err: unknown): 1 | 2 {
  return err instanceof UsageError || err instanceof ConfigError ? 2 : 1;
}

main(process.argv.slice(2)).catch((err: unknown) => {
  const code = exitCode(err);
  // A fixable error is its one-line message; anything else is a bug, with its stack.
  if (code === 2) process.stderr.write(`${(err as Error).message}\n`);
  else process.stderr.write(`kvgate: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(code);
});
