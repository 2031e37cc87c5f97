import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/**
 * tsc copies no .proto files, so the compiled module (dist/gateway/epp/) finds
 * them in the source tree it was built from; run from source they sit beside it.
 */
export function protoDir(): string {
  const beside = fileURLToPath(new URL('./proto/', import.meta.url));
  if (existsSync(beside)) return beside;
  return fileURLToPath(new URL('../../../gateway/epp/proto/', import.meta.url));
}

/** Decoding options shared by the server and the tests' Envoy stand-in: plain field names, enums as names, oneofs named. */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: false,
  oneofs: true,
};

export interface EppProtos {
  ExternalProcessor: grpc.ServiceClientConstructor;
  Health: grpc.ServiceClientConstructor;
}

export function loadProtos(): EppProtos {
  const dir = protoDir();
  const def = protoLoader.loadSync(['external_processor.proto', 'health.proto'], {
    ...LOADER_OPTIONS,
    includeDirs: [dir],
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    envoy: { service: { ext_proc: { v3: { ExternalProcessor: grpc.ServiceClientConstructor } } } };
    grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } };
  };
  return {
    ExternalProcessor: pkg.envoy.service.ext_proc.v3.ExternalProcessor,
    Health: pkg.grpc.health.v1.Health,
  };
}

// --- the message shapes as proto-loader decodes and encodes them (only what kvgate reads or writes) ---

export interface HeaderValue {
  key: string;
  value?: string;
  raw_value?: Buffer;
}

export interface StructValue {
  stringValue?: string;
  numberValue?: number;
  boolValue?: boolean;
  listValue?: { values?: StructValue[] };
  structValue?: Struct;
  kind?: string;
}

export interface Struct {
  fields?: Record<string, StructValue>;
}

export interface HttpHeaders {
  headers?: { headers?: HeaderValue[] };
  end_of_stream?: boolean;
}

export interface HttpBody {
  body?: Buffer;
  end_of_stream?: boolean;
}

export interface ProcessingRequest {
  request?: string;
  request_headers?: HttpHeaders;
  response_headers?: HttpHeaders;
  request_body?: HttpBody;
  response_body?: HttpBody;
  request_trailers?: object;
  response_trailers?: object;
  metadata_context?: { filter_metadata?: Record<string, Struct> } | undefined;
}

export interface HeaderMutation {
  set_headers?: { header: HeaderValue; append_action?: string }[];
  remove_headers?: string[];
}

export interface CommonResponse {
  status?: string;
  header_mutation?: HeaderMutation;
  body_mutation?: { streamed_response?: { body: Buffer; end_of_stream: boolean } };
  clear_route_cache?: boolean;
}

export interface ProcessingResponse {
  request_headers?: { response?: CommonResponse };
  response_headers?: { response?: CommonResponse };
  request_body?: { response?: CommonResponse };
  response_body?: { response?: CommonResponse };
  request_trailers?: object;
  response_trailers?: object;
  immediate_response?: {
    status: { code: number | string };
    headers?: HeaderMutation;
    body?: Buffer;
    details?: string;
  };
  dynamic_metadata?: Struct;
}

/** A header's value whether Envoy sent it as `value` or as `raw_value` bytes. */
export function headerText(h: HeaderValue): string {
  if (h.raw_value && h.raw_value.length > 0) return h.raw_value.toString('utf8');
  return h.value ?? '';
}
