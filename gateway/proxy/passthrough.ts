import type { ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import httpProxy from 'http-proxy';
import { badRequest, GatewayError, sendError } from '../front/errors.js';
import type { Fleet, Worker } from '../fleet/fleet.js';
import { forwardedHeaders, hopByHop } from './headers.js';
import type { GatewayMetrics } from '../ops/metrics.js';
import { workerAuthorization } from './upstream-auth.js';
import { classifyPassthrough, type PassthroughConfig } from './passthrough-routes.js';

export interface PassthroughOptions {
  /** Which routes go through (gateway/proxy/passthrough-routes.ts); default: per-request routes only. */
  readonly routes?: PassthroughConfig | undefined;
  /** Forward the client's `Authorization` to workers without a key of their own (gateway/proxy/upstream-auth.ts). */
  readonly passClientAuthorization?: boolean | undefined;
}

/** `..` or `.` path segments, also percent-encoded: the worker might resolve them to a path we never meant to expose. */
const DOT_SEGMENT = /(^|\/)(\.|%2e){1,2}(\/|$|\?)/i;
const ENCODED_SLASH = /%2f|%5c|\\/i;

/**
 * Plain pass-through for the endpoints the gateway does not route (embeddings,
 * tokenize, ...): any healthy worker, bytes untouched, upstream aborted when
 * the client goes away.
 */
export class Passthrough {
  readonly #proxy = httpProxy.createProxyServer({ xfwd: false, ws: false, proxyTimeout: 0 });
  readonly #fleet: Fleet;
  readonly #metrics: GatewayMetrics;
  readonly #routes: PassthroughConfig;

  constructor(fleet: Fleet, metrics: GatewayMetrics, options: PassthroughOptions = {}) {
    this.#fleet = fleet;
    this.#metrics = metrics;
    this.#routes = options.routes ?? { allowAdminRoutes: [] };
    // The same header rules as the routed path (headers.ts): hop-by-hop out, forwarded-* appended, upstream auth.
    this.#proxy.on('proxyReq', (proxyReq: ClientRequest, req: IncomingMessage, res: ServerResponse) => {
      const drop = hopByHop(req.headers, true);
      for (const name of Object.keys(req.headers)) {
        if (name !== 'connection' && (drop(name) || name === 'x-kvgate-admin-token')) proxyReq.removeHeader(name);
      }
      for (const [name, value] of Object.entries(forwardedHeaders(req.headers, req.socket.remoteAddress)))
        proxyReq.setHeader(name, value);
      if (options.passClientAuthorization !== true) proxyReq.removeHeader('authorization');
      const target = (res as PassthroughResponse).kvgateTarget;
      const auth = target ? workerAuthorization(target) : undefined;
      if (auth !== undefined) proxyReq.setHeader('authorization', auth);
    });
    // http-proxy only aborts on a request 'aborted'/'error' event; a client that
    // closes after sending its whole body shows up as the response closing instead.
    this.#proxy.on('proxyReq', (proxyReq: ClientRequest, _req: IncomingMessage, res: ServerResponse) => {
      res.on('close', () => {
        if (!res.writableFinished) proxyReq.destroy();
      });
    });
    this.#proxy.on('proxyRes', (proxyRes: IncomingMessage, req: IncomingMessage, res: ServerResponse) => {
      // http-proxy copies proxyRes.headers to the client after this event, so hop-by-hop ones are dropped here.
      const drop = hopByHop(proxyRes.headers, true);
      for (const name of Object.keys(proxyRes.headers)) if (drop(name)) delete proxyRes.headers[name];
      proxyRes.headers.connection = req.headers.connection === 'close' ? 'close' : 'keep-alive';
      const worker = (res as PassthroughResponse).kvgateWorker;
      if (worker) res.setHeader('x-kvgate-worker', worker);
      res.setHeader('x-kvgate-strategy', 'passthrough');
      res.once('finish', () =>
        this.#metrics.request('passthrough', worker ?? '', 'passthrough', proxyRes.statusCode ?? 0),
      );
    });
  }

  /** `target`: a worker that must answer (e.g. the one that stored a response); any healthy one otherwise. */
  handle(req: IncomingMessage, res: ServerResponse, target?: Worker): void {
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    if (DOT_SEGMENT.test(path) || ENCODED_SLASH.test(path)) {
      sendError(res, badRequest('path must not contain dot segments or encoded slashes', null, 'invalid_path'));
      return;
    }
    const refused = refusal(classifyPassthrough(path, this.#routes), req.method ?? 'GET', path);
    if (refused) {
      this.#metrics.request('passthrough', 'none', 'passthrough', refused.status);
      sendError(res, refused);
      return;
    }
    const worker = target ?? this.#fleet.anyHealthy();
    if (!worker) {
      sendError(
        res,
        new GatewayError(503, 'no healthy worker', 'service_unavailable', 'no_healthy_worker', null, true),
      );
      return;
    }
    (res as PassthroughResponse).kvgateWorker = worker.id;
    (res as PassthroughResponse).kvgateTarget = worker;
    this.#proxy.web(req, res, { target: worker.url, changeOrigin: true }, (err: Error) => {
      if (res.writableEnded) return;
      // Not req.destroyed: a fully read request is auto-destroyed while its client still waits for the answer.
      const gone = res.destroyed || !res.socket || res.socket.destroyed;
      this.#metrics.upstreamError(worker.id, gone ? 'client_abort' : 'passthrough');
      if (!gone)
        sendError(
          res,
          new GatewayError(
            502,
            `upstream worker '${worker.id}' failed: ${err.message}`,
            'upstream_error',
            'upstream_error',
            null,
            true,
          ),
        );
    });
  }

  close(): void {
    this.#proxy.close();
  }
}

function refusal(verdict: 'forward' | 'admin' | 'unknown', method: string, path: string): GatewayError | undefined {
  if (verdict === 'admin')
    return new GatewayError(
      403,
      `${method} ${path} changes engine state and is not served on the public port; use the admin port (LoRA: /lora/load, /lora/unload) or open it with server.passthrough.allowAdminRoutes`,
      'permission_error',
      'admin_route_refused',
    );
  if (verdict === 'unknown')
    return new GatewayError(
      404,
      `no route for ${method} ${path}: the public port forwards only known per-request engine routes (server.passthrough.allowAdminRoutes opens others)`,
      'not_found_error',
      'unknown_url',
    );
  return undefined;
}

type PassthroughResponse = ServerResponse & { kvgateWorker?: string; kvgateTarget?: Worker };
