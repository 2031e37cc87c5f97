import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';
import { Agent, request, type Dispatcher } from 'undici';
import { parse as parseYaml } from 'yaml';

/**
 * A connection to the Kubernetes API server, in-cluster or from a kubeconfig.
 * Hand-written on undici (already a dependency) rather than on
 * `@kubernetes/client-node`: its current major (2.x) needs Node >= 22.19 (it
 * pulls undici 8, which fails to load on Node 20), and the 1.x line that does
 * load adds 68 packages / 72 MB to a 217 MB production install, for the two
 * GETs and one watch this module makes.
 */
export interface KubeConnection {
  /** `https://10.96.0.1:443`, no trailing slash. */
  readonly server: string;
  /** The namespace of the service account (in-cluster) or of the kubeconfig context, if any. */
  readonly namespace: string | undefined;
  /** Sent as `Authorization`; re-read on every request, because projected service-account tokens rotate. */
  authorization(): string | undefined;
  readonly dispatcher: Dispatcher;
  close(): Promise<void>;
}

/** Where in-cluster credentials live; tests point these at temporary files. */
export interface KubeEnvironment {
  env?: NodeJS.ProcessEnv;
  serviceAccountDir?: string;
  home?: string;
}

export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** A problem with the configured credentials: retrying will not help. */
export class KubeConfigError extends Error {
  override name = 'KubeConfigError';
}

/**
 * Picks the credentials: an explicit kubeconfig path, else in-cluster when
 * `KUBERNETES_SERVICE_HOST` is set, else `$KUBECONFIG` or `~/.kube/config`.
 */
export function connectKube(
  options: { kubeconfig?: string | undefined; context?: string | undefined },
  kenv: KubeEnvironment = {},
): KubeConnection {
  const env = kenv.env ?? process.env;
  if (options.kubeconfig !== undefined) return fromKubeconfig(options.kubeconfig, options.context);
  if (env.KUBERNETES_SERVICE_HOST) return inCluster(env, kenv.serviceAccountDir ?? SERVICE_ACCOUNT_DIR);
  const fallback = env.KUBECONFIG?.split(':').find((p) => p !== '') ?? join(kenv.home ?? homedir(), '.kube', 'config');
  if (!existsSync(fallback))
    throw new KubeConfigError(
      'kubernetes discovery: not running in a cluster (KUBERNETES_SERVICE_HOST unset) and no kubeconfig (set discovery.kubeconfig or KUBECONFIG)',
    );
  return fromKubeconfig(fallback, options.context);
}

function inCluster(env: NodeJS.ProcessEnv, dir: string): KubeConnection {
  const host = env.KUBERNETES_SERVICE_HOST!;
  const port = env.KUBERNETES_SERVICE_PORT || '443';
  const tokenFile = join(dir, 'token');
  const ca = readOrThrow(join(dir, 'ca.crt'), 'the service account CA');
  readOrThrow(tokenFile, 'the service account token');
  const nsFile = join(dir, 'namespace');
  const namespace = existsSync(nsFile) ? readFileSync(nsFile, 'utf8').trim() : undefined;
  const server = `https://${host.includes(':') ? `[${host}]` : host}:${port}`;
  return connection(server, namespace, () => `Bearer ${readFileSync(tokenFile, 'utf8').trim()}`, { ca });
}

interface NamedEntry<T> {
  name?: string;
  [key: string]: unknown;
  cluster?: T;
  user?: T;
  context?: T;
}
type Fields = Record<string, unknown>;

function fromKubeconfig(file: string, contextName: string | undefined): KubeConnection {
  const text = readOrThrow(file, 'the kubeconfig');
  let doc: Fields;
  try {
    doc = (parseYaml(text) ?? {}) as Fields;
  } catch (err) {
    throw new KubeConfigError(`kubernetes discovery: ${file}: invalid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  const base = dirname(file);
  const pick = (list: unknown, name: unknown, what: string): Fields => {
    const found = (Array.isArray(list) ? (list as NamedEntry<Fields>[]) : []).find((e) => e.name === name);
    if (found === undefined)
      throw new KubeConfigError(`kubernetes discovery: ${file}: no ${what} named '${String(name)}'`);
    return (found[what] ?? {}) as Fields;
  };
  const ctx = pick(doc.contexts, contextName ?? doc['current-context'], 'context');
  const cluster = pick(doc.clusters, ctx.cluster, 'cluster');
  const user = ctx.user === undefined ? {} : pick(doc.users, ctx.user, 'user');
  const server = String(cluster.server ?? '').replace(/\/+$/, '');
  if (!/^https?:\/\//.test(server))
    throw new KubeConfigError(`kubernetes discovery: ${file}: cluster server must be an http(s) URL, got '${server}'`);
  if (user.exec !== undefined || user['auth-provider'] !== undefined) {
    throw new KubeConfigError(
      `kubernetes discovery: ${file}: exec and auth-provider credentials are not supported; use a service-account token (user.token or user.tokenFile) or a client certificate`,
    );
  }
  const material = (dataKey: string, fileKey: string): Buffer | undefined => {
    if (typeof user[dataKey] === 'string' || typeof cluster[dataKey] === 'string')
      return Buffer.from(String(user[dataKey] ?? cluster[dataKey]), 'base64');
    const path = user[fileKey] ?? cluster[fileKey];
    if (typeof path !== 'string') return undefined;
    return Buffer.from(readOrThrow(isAbsolute(path) ? path : join(base, path), fileKey));
  };
  const tls = {
    ca: material('certificate-authority-data', 'certificate-authority'),
    cert: material('client-certificate-data', 'client-certificate'),
    key: material('client-key-data', 'client-key'),
    rejectUnauthorized: cluster['insecure-skip-tls-verify'] !== true,
    servername: typeof cluster['tls-server-name'] === 'string' ? cluster['tls-server-name'] : undefined,
  };
  let authorization: () => string | undefined = () => undefined;
  if (typeof user.token === 'string') {
    const token = user.token;
    authorization = () => `Bearer ${token}`;
  } else if (typeof user.tokenFile === 'string') {
    const path = isAbsolute(user.tokenFile) ? user.tokenFile : join(base, user.tokenFile);
    readOrThrow(path, 'user.tokenFile');
    authorization = () => `Bearer ${readFileSync(path, 'utf8').trim()}`;
  } else if (typeof user.username === 'string') {
    const basic = Buffer.from(`${user.username}:${String(user.password ?? '')}`).toString('base64');
    authorization = () => `Basic ${basic}`;
  }
  const namespace = typeof ctx.namespace === 'string' ? ctx.namespace : undefined;
  return connection(server, namespace, authorization, tls);
}

function connection(
  server: string,
  namespace: string | undefined,
  authorization: () => string | undefined,
  tls: {
    ca?: string | Buffer | undefined;
    cert?: Buffer | undefined;
    key?: Buffer | undefined;
    rejectUnauthorized?: boolean;
    servername?: string | undefined;
  },
): KubeConnection {
  const connect: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(tls)) if (v !== undefined) connect[k] = v;
  const agent = new Agent({ connect, keepAliveTimeout: 30_000 });
  return { server, namespace, authorization, dispatcher: agent, close: () => agent.close() };
}

function readOrThrow(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new KubeConfigError(
      `kubernetes discovery: cannot read ${what} (${path}): ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    );
  }
}

/** A non-2xx answer of the API server; `status` 410 means "resource version too old: list again". */
export class KubeApiError extends Error {
  override name = 'KubeApiError';
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export interface KubeRequest {
  signal: AbortSignal;
  /** For watches: the server ends the stream after `timeoutSeconds`; this is the client's own limit on silence. */
  bodyTimeoutMs?: number;
}

/** A GET whose body the caller consumes (JSON or a watch stream); throws `KubeApiError` on non-2xx. */
export async function kubeGet(
  conn: KubeConnection,
  path: string,
  opts: KubeRequest,
): Promise<Dispatcher.ResponseData['body']> {
  const headers: Record<string, string> = { accept: 'application/json' };
  const auth = conn.authorization();
  if (auth !== undefined) headers.authorization = auth;
  const res = await request(`${conn.server}${path}`, {
    method: 'GET',
    headers,
    signal: opts.signal,
    dispatcher: conn.dispatcher,
    headersTimeout: 30_000,
    bodyTimeout: opts.bodyTimeoutMs ?? 30_000,
  });
  if (res.statusCode >= 200 && res.statusCode < 300) return res.body;
  const text = await res.body.text().catch(() => '');
  let message = text.slice(0, 300);
  try {
    const status = JSON.parse(text) as { message?: unknown };
    if (typeof status.message === 'string') message = status.message;
  } catch {
    /* not a Status object: keep the raw text */
  }
  throw new KubeApiError(res.statusCode, `GET ${path}: ${res.statusCode} ${message}`);
}

export async function kubeGetJson<T>(conn: KubeConnection, path: string, opts: KubeRequest): Promise<T> {
  const body = await kubeGet(conn, path, opts);
  return (await body.json()) as T;
}
