import type { ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import httpProxy from 'http-proxy';
import { GatewayError, sendError } from './errors.js';
import type { Fleet } from './fleet.js';
import type { GatewayMetrics } from './metrics.js';

/**
 * Plain pass-through for the endpoints the gateway does not route (embeddings,
 * tokenize, ...): any healthy worker, bytes untouched, upstream aborted when
 * the client goes away.
 */
export class Passthrough {
  readonly #proxy = httpProxy.createProxyServer({ xfwd: false, ws: false, proxyTimeout: 0 });
  readonly #fleet: Fleet;
  readonly #metrics: GatewayMetrics;

  constructor(fleet: Fleet, metrics: GatewayMetrics) {
    this.#fleet = fleet;
    this.#metrics = metrics;
    // http-proxy only aborts on a request 'aborted'/'error' event; a client that
    // closes after sending its whole body shows up as the response closing instead.
    this.#proxy.on('proxyReq', (proxyReq: ClientRequest, _req: IncomingMessage, res: ServerResponse) => {
      res.on('close', () => {
        if (!res.writableFinished) proxyReq.destroy();
      });
    });
    this.#proxy.on('proxyRes', (proxyRes: IncomingMessage, _req: IncomingMessage, res: ServerResponse) => {
      const worker = (res as PassthroughResponse).kvgateWorker;
      if (worker) res.setHeader('x-kvgate-worker', worker);
      res.setHeader('x-kvgate-strategy', 'passthrough');
      res.once('finish', () => this.#metrics.request('passthrough', worker ?? '', 'passthrough', proxyRes.statusCode ?? 0));
    });
  }

  handle(req: IncomingMessage, res: ServerResponse): void {
    const worker = this.#fleet.anyHealthy();
    if (!worker) {
      sendError(res, new GatewayError(503, 'no healthy worker', 'service_unavailable', 'no_healthy_worker', null, true));
      return;
    }
    (res as PassthroughResponse).kvgateWorker = worker.id;
    this.#proxy.web(req, res, { target: worker.url, changeOrigin: true }, (err: Error) => {
      if (res.writableEnded) return;
      const gone = req.destroyed || res.destroyed;
      this.#metrics.upstreamError(worker.id, gone ? 'client_abort' : 'passthrough');
      if (!gone) sendError(res, new GatewayError(502, `upstream worker '${worker.id}' failed: ${err.message}`, 'upstream_error', 'upstream_error', null, true));
    });
  }

  close(): void {
    this.#proxy.close();
  }
}

type PassthroughResponse = ServerResponse & { kvgateWorker?: string };
