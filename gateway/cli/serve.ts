import { ConfigError } from '../../config/errors.js';
import { ENV_OVERRIDES, loadConfigFile } from '../../config/load.js';
import { intFlag, parseFlags, UsageError } from './cli-args.js';
import { blameStartup } from './startup-errors.js';
import { strategyNames } from '../routing/strategies/registry.js';
import { startGateway } from '../gateway.js';
import { RoutingSetupError } from '../routing/policy.js';
import { createLogger } from '../ops/log.js';
import { manageLifecycle } from '../ops/lifecycle.js';
import { KubeConfigError } from '../fleet/discovery/kube-api.js';

const spec = {
  name: 'serve',
  summary: 'run the gateway in front of a fleet described by a config file',
  help: `usage: kvgate serve --config FILE [flags]

Runs the OpenAI-compatible gateway in front of the workers listed in FILE
(YAML; see config/examples/). Flags override the file and the environment.

flags:
  --config FILE       config file (or KVGATE_CONFIG)
  --host HOST         listen address (KVGATE_HOST; default 0.0.0.0)
  --port PORT         listen port, 0 = any free port (KVGATE_PORT; default 8080)
  --admin-port PORT   admin listener port on 127.0.0.1 (KVGATE_ADMIN_PORT; default 8081)
  --strategy NAME     routing strategy (KVGATE_STRATEGY), e.g. least-load, kv
  --watch-config      reload when FILE changes (as on SIGHUP)
  -h, --help          this help

environment (flags win over these, these over FILE):
  KVGATE_CONFIG       the config file, when --config is not given
${ENV_OVERRIDES.map((o) => `  ${o.env.padEnd(19)} ${o.path.join('.')}`).join('\n')}
  KVGATE_LOG_LEVEL    log level (default info)

Logs are JSON lines on stdout.
SIGHUP reloads the fleet and the routing from FILE without dropping requests
(an invalid file is rejected and the running config stays; listen ports,
models and upstream settings need a restart). SIGTERM or SIGINT drains:
in-flight requests finish (up to server.drainTimeoutMs), then the process exits 0.`,
  options: {
    config: { type: 'string' },
    host: { type: 'string' },
    port: { type: 'string' },
    'admin-port': { type: 'string' },
    strategy: { type: 'string' },
    'watch-config': { type: 'boolean' },
  },
} as const;

export async function serveCommand(argv: string[]): Promise<void> {
  const flags = parseFlags(spec, argv);
  if (!flags) return;
  const file = flags.config ?? process.env.KVGATE_CONFIG;
  if (!file) throw new UsageError('kvgate serve: --config FILE is required (or set KVGATE_CONFIG)');
  // Checked here, not after they became KVGATE_* overrides, so the message names the flag that was typed.
  for (const flag of ['port', 'admin-port'] as const) intFlag('serve', flag, flags[flag], 0, 0, 65535);
  if (flags.strategy !== undefined && !strategyNames().includes(flags.strategy))
    throw new UsageError(
      `kvgate serve: --strategy: unknown strategy '${flags.strategy}' (known: ${strategyNames().join(', ')})`,
    );
  const env = { ...process.env };
  if (flags.host !== undefined) env.KVGATE_HOST = flags.host;
  if (flags.port !== undefined) env.KVGATE_PORT = flags.port;
  if (flags['admin-port'] !== undefined) env.KVGATE_ADMIN_PORT = flags['admin-port'];
  if (flags.strategy !== undefined) env.KVGATE_STRATEGY = flags.strategy;
  const config = loadConfigFile(file, env);
  const log = createLogger('kvgate');
  let gateway;
  try {
    gateway = await startGateway(config, { log });
  } catch (err) {
    // Rules that need the fleet (pools, pinned workers) are checked at start-up: name the file as config errors do.
    if (err instanceof RoutingSetupError)
      throw new RoutingSetupError(err.message.replace(/^kvgate: /, `kvgate: ${file}: `));
    if (err instanceof KubeConfigError) throw new ConfigError(`kvgate: ${file}: fleet.discovery: ${err.message}`);
    throw blameStartup(err, { command: 'kvgate serve', file, setBy: setBy(flags, process.env) });
  }
  manageLifecycle({
    gateway,
    log,
    configFile: file,
    env,
    watch: flags['watch-config'] === true,
    exit: (code) => process.exit(code),
  });
}

/** Which flag or environment variable set a config key this time, as the user typed it. */
function setBy(
  flags: { host?: string; port?: string; 'admin-port'?: string },
  env: NodeJS.ProcessEnv,
): Record<string, string | undefined> {
  const named = (flag: string, value: string | undefined, envName: string) =>
    value !== undefined ? `--${flag} ${value}` : env[envName] ? `${envName}=${env[envName]}` : undefined;
  return {
    'server.host': named('host', flags.host, 'KVGATE_HOST'),
    'server.port': named('port', flags.port, 'KVGATE_PORT'),
    'admin.host': env.KVGATE_ADMIN_HOST ? `KVGATE_ADMIN_HOST=${env.KVGATE_ADMIN_HOST}` : undefined,
    'admin.port': named('admin-port', flags['admin-port'], 'KVGATE_ADMIN_PORT'),
  };
}
