import { parseConfig } from '../../config/load.js';
import type { GatewayConfigInput } from '../../config/schema.js';
import { intFlag, numberFlag, parseFlags } from './cli-args.js';
import { blameStartup } from './startup-errors.js';
import { startGateway } from '../gateway.js';
import { createLogger, writeInOrder } from '../ops/log.js';
import { strategyNames } from '../routing/strategies/registry.js';

const MODEL = 'Qwen/Qwen3-0.6B';
/** Qwen3-0.6B's context length; the workers and the gateway are told the same. */
const MAX_MODEL_LEN = 40960;

const spec = {
  name: 'demo',
  summary: 'start four simulated workers and the gateway in front of them',
  help: `usage: kvgate demo [flags]

Starts simulated vLLM workers (kvgate sim, publishing KV events over ZeroMQ)
and the gateway in front of them, with KV-aware routing, then prints what to curl.
No GPU needed. Ctrl-C stops everything.

flags:
  --workers N        simulated workers (default 4)
  --port PORT        gateway port (default 8080; 0 = any free port)
  --admin-port PORT  admin port on 127.0.0.1 (default 8081; 0 = any free port)
  --strategy NAME    routing strategy (default kv)
  --speedup X        simulator time divisor (default 1: real-time engine timing)
  --kv-blocks N      KV cache blocks per worker (default 4096)
  -h, --help         this help`,
  options: {
    workers: { type: 'string' },
    port: { type: 'string' },
    'admin-port': { type: 'string' },
    strategy: { type: 'string' },
    speedup: { type: 'string' },
    'kv-blocks': { type: 'string' },
  },
} as const;

export async function demoCommand(argv: string[]): Promise<void> {
  const flags = parseFlags(spec, argv);
  if (!flags) return;
  const workers = intFlag('demo', 'workers', flags.workers, 4, 1);
  const port = intFlag('demo', 'port', flags.port, 8080, 0, 65535);
  const adminPort = intFlag('demo', 'admin-port', flags['admin-port'], 8081, 0, 65535);
  const speedup = numberFlag('demo', 'speedup', flags.speedup, 1, 0.001);
  const kvBlocks = intFlag('demo', 'kv-blocks', flags['kv-blocks'], 4096, 1);
  const strategy = flags.strategy ?? (strategyNames().includes('kv') ? 'kv' : 'least-load');
  const log = createLogger('kvgate');
  // The simulator is a bench program: loaded only once a demo really starts, never with the gateway itself.
  const [{ spawnSimFleet }, { defaultTokenizerDir }] = await Promise.all([
    import('../../bench/sim/spawn.js'),
    import('../../bench/sim/text.js'),
  ]);
  const tokenizerDir = defaultTokenizerDir();

  const fleet = await spawnSimFleet(workers, [
    '--port',
    '0',
    '--model',
    MODEL,
    '--tokenizer',
    tokenizerDir,
    '--speedup',
    String(speedup),
    '--kv-blocks',
    String(kvBlocks),
    '--max-model-len',
    String(MAX_MODEL_LEN),
    '--kv-events',
    'tcp://127.0.0.1:*',
    '--kv-events-replay',
    'tcp://127.0.0.1:*',
  ]);
  const input: GatewayConfigInput = {
    server: { host: '127.0.0.1', port },
    admin: { port: adminPort },
    fleet: {
      health: { intervalMs: 1000 },
      workers: fleet.workers.map((w) => ({
        id: w.worker,
        url: w.url,
        models: [MODEL],
        ...(w.kvEvents
          ? { kvEvents: { endpoint: w.kvEvents, ...(w.kvReplay ? { replayEndpoint: w.kvReplay } : {}) } }
          : {}),
      })),
    },
    models: {
      [MODEL]: {
        tokenizer: { type: 'local', dir: tokenizerDir },
        blockSize: fleet.workers[0]!.blockSize,
        maxModelLen: MAX_MODEL_LEN,
      },
    },
    routing: { strategy },
  };
  let gateway;
  try {
    gateway = await startGateway(parseConfig(input, 'kvgate demo', {}), { log });
  } catch (err) {
    await fleet.stop();
    const again = 'is another kvgate demo running? pick a free port, or 0 for any';
    throw blameStartup(err, {
      command: 'kvgate demo',
      setBy: { 'server.port': `--port ${port}`, 'admin.port': `--admin-port ${adminPort}` },
      hints: { 'server.port': again, 'admin.port': again },
    });
  }
  const { url, adminUrl } = gateway;
  writeInOrder(
    log,
    `
kvgate demo: ${workers} simulated vLLM workers behind ${url} (strategy: ${strategy})

  curl -s ${url}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model": "${MODEL}", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}'

  curl -sN ${url}/v1/completions -H 'content-type: application/json' \\
    -d '{"model": "${MODEL}", "prompt": "Once upon a time", "max_tokens": 32, "stream": true}'

  curl -s ${adminUrl}/debug/workers            # health, load and KV index per worker
  curl -s ${adminUrl}/debug/route -d '{"model": "${MODEL}", "prompt": "Once upon a time"}'
  curl -s ${url}/metrics | grep kvgate_

Ctrl-C stops the gateway and the workers.
`,
  );
  const stop = (signal: string) => {
    log.info({ signal }, 'demo stopping');
    void gateway
      .close()
      .finally(() => fleet.stop())
      .then(() => process.exit(0));
  };
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
}
