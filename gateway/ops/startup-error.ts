import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A start-up failure the operator fixes in the config or on the command line (a
 * port in use, a missing tokenizer directory). `key` is the config key at fault,
 * so the CLI can name it, or the flag that set it, in one line.
 */
export class StartupError extends Error {
  override name = 'StartupError';
  constructor(
    readonly key: string,
    message: string,
  ) {
    super(message);
  }
}

const LISTEN_FAILURES: Record<string, { on: 'host' | 'port'; why: string }> = {
  EADDRINUSE: { on: 'port', why: 'address already in use' },
  EACCES: { on: 'port', why: 'permission denied (ports below 1024 need privileges)' },
  EADDRNOTAVAIL: { on: 'host', why: 'no such address on this machine' },
  ENOTFOUND: { on: 'host', why: 'host name not found' },
  EAI_AGAIN: { on: 'host', why: 'host name not resolvable' },
};

/**
 * Listens and resolves with `http://host:port` (the real port when 0 was asked for).
 * `section` (`server`, `admin`) names the config keys a failure is blamed on.
 */
export function listen(server: Server, host: string, port: number, section: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      const known = err.code ? LISTEN_FAILURES[err.code] : undefined;
      if (!known) return reject(err);
      reject(new StartupError(`${section}.${known.on}`, `cannot listen on ${host}:${port}: ${known.why}`));
    };
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      const a = server.address() as AddressInfo;
      const shown = a.family === 'IPv6' ? `[${a.address}]` : a.address;
      resolve(`http://${shown === '0.0.0.0' ? '127.0.0.1' : shown === '[::]' ? '[::1]' : shown}:${a.port}`);
    });
  });
}
