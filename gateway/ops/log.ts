import { pino, type Logger } from 'pino';

/**
 * Secrets never reach a log line: the client's `Authorization`, the admin token
 * header, tokens and worker API keys, wherever a log call nests them (a request's
 * headers, an error's options, a worker config). pino redacts by path, so the
 * common nestings are listed one to three levels deep.
 */
const SECRET_KEYS = [
  'authorization',
  '["x-kvgate-admin-token"]',
  'token',
  'apiKey',
  'api_key',
  '["x-api-key"]',
  'cookie',
];
const NESTINGS = [
  '',
  '*.',
  '*.*.',
  'headers.',
  '*.headers.',
  'req.headers.',
  'err.headers.',
  'config.fleet.workers[*].',
  'workers[*].',
  'fleet.workers[*].',
];

export const REDACT_PATHS: readonly string[] = NESTINGS.flatMap((n) =>
  SECRET_KEYS.map((k) => (k.startsWith('[') ? `${n.replace(/\.$/, '')}${k}` : `${n}${k}`)),
).filter((p) => !p.startsWith('['));

/** JSON lines on stdout; level from `KVGATE_LOG_LEVEL` (default info). */
export function createLogger(name: string, level = process.env.KVGATE_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level, redact: { paths: [...REDACT_PATHS], censor: '[redacted]' } });
}

/**
 * Writes plain text (the demo's banner) through the logger's own stream: pino buffers
 * its lines and writes them later, so text written to process.stdout directly would
 * land among the log lines logged before it.
 */
export function writeInOrder(log: Logger, text: string): void {
  const stream = (log as unknown as Record<symbol, { write?: (s: string) => unknown } | undefined>)[
    pino.symbols.streamSym
  ];
  if (typeof stream?.write === 'function') stream.write(text);
  else process.stdout.write(text);
}
