import { ConfigError } from '../../config/errors.js';
import { loadConfigFile } from '../../config/load.js';
import { intFlag, parseFlags, UsageError } from './cli-args.js';
import { startGateway } from '../gateway.js';
import { RoutingSetupError } from '../routing/policy.js';
import { createLogger } from '../ops/log.js';
import { manageLifecycle } from '../ops/lifecycle.js';
import { KubeConfigError } from '../fleet/discovery/kube-api.js';

const spec = {
  name: 'epp',
  summary: 'run as the Endpoint Picker of a Gateway API InferencePool (Envoy ext_proc over gRPC)',
  help: `usage: kvgate epp --config FILE [flags]

Runs the gateway's routing core as an Endpoint Picker (EPP) for the Kubernetes
Gateway API Inference Extension: Envoy's ExternalProcessor (ext_proc) in
FULL_DUPLEX_STREAMED mode and grpc.health.v1 on the gRPC port. The proxy in
front forwards; kvgate picks the endpoint (x-gateway-destination-endpoint).
The HTTP port serves only /metrics, /health and /ready (404 for anything else):
inference reaches the engines through the Gateway, never through kvgate, unless
--proxy also opens the OpenAI proxy routes there (as kvgate serve does).

flags:
  --config FILE       config file (or KVGATE_CONFIG)
  --grpc-host HOST    gRPC listen address (default 0.0.0.0)
  --grpc-port PORT    gRPC listen port, 0 = any free port (default 9002)
  --host HOST         HTTP listen address (KVGATE_HOST; default 0.0.0.0)
  --port PORT         HTTP (metrics) port, 0 = any free port (KVGATE_PORT; default 8080)
  --admin-port PORT   admin listener port on 127.0.0.1 (KVGATE_ADMIN_PORT; default 8081)
  --strategy NAME     routing strategy (KVGATE_STRATEGY), e.g. least-load, kv
  --proxy             also serve the OpenAI proxy routes on the HTTP port
  -h, --help          this help

Logs are JSON lines on stdout ("epp ready" with grpcAddress once serving).`,
  options: {
    config: { type: 'string' },
    'grpc-host': { type: 'string' },
    'grpc-port': { type: 'string' },
    host: { type: 'string' },
    port: { type: 'string' },
    'admin-port': { type: 'string' },
    strategy: { type: 'string' },
    proxy: { type: 'boolean' },
  },
} as const;

export async function eppCommand(argv: string[]): Promise<void> {
  const flags = parseFlags(spec, argv);
  if (!flags) return;
  const file = flags.config ?? process.env.KVGATE_CONFIG;
  if (!file) throw new UsageError('kvgate epp: --config FILE is required (or set KVGATE_CONFIG)');
  const grpcPort = intFlag('epp', 'grpc-port', flags['grpc-port'], 9002);
  if (grpcPort > 65535) throw new UsageError(`kvgate epp: --grpc-port must be at most 65535, got ${grpcPort}`);
  const env = { ...process.env };
  if (flags.host !== undefined) env.KVGATE_HOST = flags.host;
  if (flags.port !== undefined) env.KVGATE_PORT = flags.port;
  if (flags['admin-port'] !== undefined) env.KVGATE_ADMIN_PORT = flags['admin-port'];
  if (flags.strategy !== undefined) env.KVGATE_STRATEGY = flags.strategy;
  const config = loadConfigFile(file, env);
  const log = createLogger('kvgate');
  let gateway;
  try {
    gateway = await startGateway(config, { log, front: flags.proxy ? 'proxy' : 'ops' });
  } catch (err) {
    if (err instanceof RoutingSetupError)
      throw new RoutingSetupError(err.message.replace(/^kvgate: /, `kvgate: ${file}: `));
    if (err instanceof KubeConfigError) throw new ConfigError(`kvgate: ${file}: fleet.discovery: ${err.message}`);
    throw err;
  }
  // Loaded here, so `kvgate serve` never pays for gRPC.
  const { startEpp } = await import('../epp/server.js');
  const epp = await startEpp(gateway, flags['grpc-host'] ?? '0.0.0.0', grpcPort, log);
  log.info({ grpcAddress: epp.address, url: gateway.url, adminUrl: gateway.adminUrl }, 'epp ready');
  manageLifecycle({
    gateway,
    log,
    configFile: file,
    env,
    watch: false,
    exit: (code) => void epp.close().finally(() => process.exit(code)),
  });
}
