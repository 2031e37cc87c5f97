import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { Gateway } from '../gateway.js';
import { Picker } from './picker.js';
import { loadProtos } from './protos.js';
import { EppStream, type ProcessCall } from './stream.js';

export const PROCESSOR_SERVICE = 'envoy.service.ext_proc.v3.ExternalProcessor';

export interface EppServer {
  /** `host:port` the gRPC server listens on. */
  readonly address: string;
  close(): Promise<void>;
}

type HealthStatus = 'SERVING' | 'NOT_SERVING' | 'SERVICE_UNKNOWN';

/**
 * The Endpoint Picker front: Envoy's ExternalProcessor and gRPC health over the
 * gateway's own routing core. Health: '' (liveness) is SERVING while the process
 * runs; 'readiness' and the processor service are SERVING while some worker is
 * healthy and the gateway is not draining.
 */
export async function startEpp(gateway: Gateway, host: string, port: number, log: Logger): Promise<EppServer> {
  const protos = loadProtos();
  const picker = new Picker({
    fleet: gateway.fleet,
    pipeline: gateway.pipeline,
    metrics: gateway.metrics,
    log,
    blockSize: gateway.blockSize,
    maxBodyBytes: gateway.config.server.maxBodyBytes,
    flow: gateway.flow,
    admission: gateway.admission,
  });
  const server = new grpc.Server({
    // A 1 MB prompt arrives in many chunks, but a single message may still be large.
    'grpc.max_receive_message_length': 64 * 1024 * 1024,
  });
  server.addService(protos.ExternalProcessor.service, {
    Process: (call: ProcessCall) => new EppStream(call, picker, log),
  });
  const status = (service: string): HealthStatus => {
    if (service === '' || service === 'liveness') return 'SERVING';
    if (service === 'readiness' || service === PROCESSOR_SERVICE)
      return gateway.fleet.healthy.length > 0 && !gateway.draining ? 'SERVING' : 'NOT_SERVING';
    return 'SERVICE_UNKNOWN';
  };
  server.addService(protos.Health.service, {
    Check: (
      call: grpc.ServerUnaryCall<{ service?: string }, { status: HealthStatus }>,
      done: grpc.sendUnaryData<{ status: HealthStatus }>,
    ) => {
      const s = status(call.request.service ?? '');
      if (s === 'SERVICE_UNKNOWN')
        done({ code: grpc.status.NOT_FOUND, details: `unknown service '${call.request.service}'` });
      else done(null, { status: s });
    },
    Watch: (call: grpc.ServerWritableStream<{ service?: string }, { status: HealthStatus }>) => {
      // Sends the status now and whenever it changes, until the client leaves.
      let last: HealthStatus | undefined;
      const tick = () => {
        const s = status(call.request.service ?? '');
        if (s !== last) call.write({ status: (last = s) });
      };
      tick();
      const timer = setInterval(tick, 1000);
      call.on('cancelled', () => clearInterval(timer));
      call.on('close', () => clearInterval(timer));
    },
  });
  const bound = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      `${host.includes(':') ? `[${host}]` : host}:${port}`,
      grpc.ServerCredentials.createInsecure(),
      (err, p) => (err ? reject(err) : resolve(p)),
    ),
  );
  const shown = host === '0.0.0.0' ? '127.0.0.1' : host;
  return {
    address: `${shown}:${bound}`,
    close: () =>
      new Promise<void>((resolve) => {
        const force = setTimeout(() => server.forceShutdown(), 2000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}
