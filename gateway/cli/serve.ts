import { ConfigError } from '../../config/errors.js';
import { loadConfigFile } from '../../config/load.js';
import { parseFlags, UsageError } from './cli-args.js';
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

Logs are JSON lines on stdout; KVGATE_LOG_LEVEL sets the level (default info).
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
    throw err;
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
