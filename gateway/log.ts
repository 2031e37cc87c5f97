import { pino, type Logger } from 'pino';

/** JSON lines on stdout; level from `KVGATE_LOG_LEVEL` (default info). Authorization headers never reach a log line. */
export function createLogger(name: string, level = process.env.KVGATE_LOG_LEVEL ?? 'info'): Logger {
  return pino({
    name,
    level,
    redact: { paths: ['*.authorization', '*.headers.authorization', 'headers.authorization', '*.token'], censor: '[redacted]' },
  });
}
