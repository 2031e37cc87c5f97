import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer, connect, type AddressInfo } from 'node:net';
import { join } from 'node:path';

/**
 * The reverse proxies operators already run (nginx, HAProxy), started as
 * round-robin proxies in front of the same upstream as kvgate, so the proxy
 * bench compares kvgate with them and not only with a Node floor. Each runs
 * one worker process / one thread: kvgate is one Node thread, and giving the
 * peers more cores than it has would measure the machine, not the proxy.
 */
export interface PeerProxy {
  name: string;
  url: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

interface PeerSpec {
  name: string;
  binary: string;
  /** The Debian package that provides it, for the message printed when it is missing. */
  apt: string;
  config(o: { dir: string; port: number; upstream: URL }): { file: string; args: string[] };
}

const PEERS: PeerSpec[] = [
  {
    name: 'nginx',
    binary: 'nginx',
    apt: 'nginx',
    config({ dir, port, upstream }) {
      const file = join(dir, 'nginx.conf');
      for (const sub of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(join(dir, sub), { recursive: true });
      // As root, nginx would hand its worker to `nobody`, which cannot write into our private temp dir.
      const user = process.getuid?.() === 0 ? 'user root;\n' : '';
      writeFileSync(
        file,
        `${user}worker_processes 1;
daemon off;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'nginx-error.log')} warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${join(dir, 'body')};
  proxy_temp_path ${join(dir, 'proxy')};
  fastcgi_temp_path ${join(dir, 'fastcgi')};
  uwsgi_temp_path ${join(dir, 'uwsgi')};
  scgi_temp_path ${join(dir, 'scgi')};
  keepalive_requests 1000000;
  upstream workers {
    server ${upstream.host};
    keepalive 256;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://workers;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # Stream SSE as it comes, like kvgate does.
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
`,
      );
      return { file, args: ['-p', dir, '-c', file] };
    },
  },
  {
    name: 'haproxy',
    binary: 'haproxy',
    apt: 'haproxy',
    config({ dir, port, upstream }) {
      const file = join(dir, 'haproxy.cfg');
      writeFileSync(
        file,
        `global
  nbthread 1
  maxconn 8192
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s
frontend fe
  bind 127.0.0.1:${port}
  default_backend workers
backend workers
  balance roundrobin
  http-reuse always
  server w0 ${upstream.host}
`,
      );
      return { file, args: ['-db', '-f', file] };
    },
  },
];

/** The binary to run, or undefined; Debian puts both in /usr/sbin, which a normal user's PATH often lacks. */
function findBinary(binary: string): string | undefined {
  for (const candidate of [binary, `/usr/sbin/${binary}`]) {
    if (!spawnSync(candidate, ['-v'], { stdio: 'ignore' }).error) return candidate;
  }
  return undefined;
}

/** A port free right now; nginx and HAProxy cannot report the port they got for 0. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1');
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

async function startPeer(spec: PeerSpec, binary: string, dir: string, upstream: URL): Promise<PeerProxy> {
  const port = await freePort();
  const { args } = spec.config({ dir, port, upstream });
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(t);
  };
  const deadline = Date.now() + 10_000;
  while (!(await accepts(port))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`${spec.name} did not start: ${output.trim().split('\n').slice(-3).join(' | ')}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { name: spec.name, url: `http://127.0.0.1:${port}`, child, stop };
}

/**
 * Starts every installed peer in front of `upstreamUrl`, with its config in
 * its own folder under `dir`. Missing ones are reported (with how to install
 * them) and skipped, so the rest of the bench still runs.
 */
export async function startPeerProxies(
  dir: string,
  upstreamUrl: string,
  log: (line: string) => void,
): Promise<{ peers: PeerProxy[]; missing: string[] }> {
  const upstream = new URL(upstreamUrl);
  const peers: PeerProxy[] = [];
  const missing: string[] = [];
  for (const spec of PEERS) {
    const binary = findBinary(spec.binary);
    if (!binary) {
      missing.push(spec.name);
      log(`${spec.name}: not installed, skipped (install it with: sudo apt-get install -y ${spec.apt})`);
      continue;
    }
    const sub = join(dir, spec.name);
    mkdirSync(sub, { recursive: true });
    try {
      peers.push(await startPeer(spec, binary, sub, upstream));
    } catch (err) {
      await Promise.all(peers.map((p) => p.stop()));
      throw err;
    }
  }
  return { peers, missing };
}
