import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool } from 'undici';

/**
 * The floor for the proxy-overhead benchmark: the least a Node proxy can do —
 * one undici Pool, body in, response streamed back, no parsing, no routing.
 * Run as `node dist/bench/proxy-floor.js UPSTREAM_URL`; prints its URL.
 */
const USAGE = 'usage: node dist/bench/proxy-floor.js UPSTREAM_URL (a bare undici pass-through; prints its own URL)';
const upstream = process.argv[2];
if (upstream === '--help' || upstream === '-h') {
  console.log(USAGE);
  process.exit(0);
}
if (!upstream) {
  console.error(USAGE);
  process.exit(2);
}
const pool = new Pool(upstream, { connections: null, headersTimeout: 0, bodyTimeout: 0 });
const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    pool
      .request({
        path: req.url!,
        method: req.method as 'POST',
        headers: { 'content-type': 'application/json' },
        body: Buffer.concat(chunks),
      })
      .then(
        async (up) => {
          res.writeHead(up.statusCode, { 'content-type': String(up.headers['content-type'] ?? 'application/json') });
          for await (const chunk of up.body) res.write(chunk);
          res.end();
        },
        (err: Error) => {
          res.writeHead(502);
          res.end(err.message);
        },
      );
  });
});
server.keepAliveTimeout = 65_000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(
    JSON.stringify({ msg: 'floor ready', url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` }) + '\n',
  );
});
process.once('SIGTERM', () => process.exit(0));
// Spawned by the benchmark with our stdin piped: exit when the benchmark dies.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
