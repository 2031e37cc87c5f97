import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { GatewayError } from '../front/errors.js';
import {
  headerText,
  type HttpHeaders,
  type ProcessingRequest,
  type ProcessingResponse,
  type Struct,
  type StructValue,
} from './protos.js';
import { StreamAnswer } from './answer.js';
import { DESTINATION, LB_NAMESPACE, SERVED, SUBSET, SUBSET_NAMESPACE, type Pick, type Picker } from './picker.js';

/**
 * Envoy refuses a streamed body chunk over its buffer limit; the reference picker
 * keeps re-emitted chunks near 62 KB, and so do we.
 */
export const MAX_CHUNK_BYTES = 62 * 1024;

export type ProcessCall = grpc.ServerDuplexStream<ProcessingRequest, ProcessingResponse>;

/**
 * One HTTP request's ext_proc stream, in the FULL_DUPLEX_STREAMED mode of the
 * Endpoint Picker Protocol: the request headers are held until the body ended
 * (so the pick can read the prompt), then the headers answer carries the
 * endpoint and the body goes back in chunks; the response is passed through
 * chunk by chunk while it accounts load, first token and usage.
 */
export class EppStream {
  readonly #call: ProcessCall;
  readonly #picker: Picker;
  readonly #log: Logger;
  #path = '/';
  #headers: IncomingHttpHeaders = {};
  #subset: Set<string> | undefined;
  #requestId = '';
  /** Admission's answer for an inference request, taken when its headers arrive (before the body, as in proxy mode). */
  #admitted: boolean | Promise<boolean> = true;
  readonly #answer: StreamAnswer;
  #routing = false;
  #chunks: Buffer[] = [];
  #size = 0;
  #pick: Pick | undefined;
  #status = 200;
  #firstByte = true;
  #ended = false;

  constructor(call: ProcessCall, picker: Picker, log: Logger) {
    this.#call = call;
    this.#picker = picker;
    this.#log = log;
    this.#answer = new StreamAnswer(
      (status, headers, body) => this.#sendImmediate(status, headers, body),
      () => this.#ended || call.cancelled || call.destroyed,
    );
    call.on('data', (m: ProcessingRequest) => this.#onMessage(m));
    call.on('end', () => this.#close(200));
    call.on('error', () => this.#close(499));
    call.on('cancelled', () => this.#close(499));
  }

  #onMessage(m: ProcessingRequest): void {
    if (this.#ended) return;
    if (m.request_headers) return this.#requestHeaders(m.request_headers, m);
    if (m.request_body) {
      const { body, end_of_stream } = m.request_body;
      if (body && body.length > 0) {
        this.#size += body.length;
        if (this.#size > this.#picker.maxBodyBytes) {
          this.#chunks = [];
          return this.#immediate(
            new GatewayError(
              413,
              `request body exceeds ${this.#picker.maxBodyBytes} bytes`,
              'invalid_request_error',
              'request_too_large',
            ),
          );
        }
        this.#chunks.push(body);
      }
      if (end_of_stream) void this.#route(true);
      return;
    }
    if (m.request_trailers) {
      // Trailers end the body when it did not say so itself.
      void this.#route(true);
      return this.#send({ request_trailers: {} });
    }
    if (m.response_headers) return this.#responseHeaders(m.response_headers, m);
    if (m.response_body) return this.#responseBody(m.response_body.body, m.response_body.end_of_stream === true);
    if (m.response_trailers) {
      this.#send({ response_trailers: {} });
      this.#finish(this.#status);
    }
  }

  #requestHeaders(h: HttpHeaders, m: ProcessingRequest): void {
    for (const hv of h.headers?.headers ?? []) {
      const key = hv.key.toLowerCase();
      const value = headerText(hv);
      if (key === ':path') this.#path = value;
      else if (!key.startsWith(':')) this.#headers[key] = value;
    }
    const metadata = m.metadata_context?.filter_metadata;
    this.#subset = subsetHint(metadata?.[SUBSET_NAMESPACE]) ?? subsetHint(metadata?.[LB_NAMESPACE]);
    const id = this.#headers['x-request-id'];
    this.#requestId = typeof id === 'string' && id !== '' ? id : randomUUID();
    if (this.#picker.isInference(this.#path)) this.#admitted = this.#picker.admit(this.#answer, this.#requestId);
    if (h.end_of_stream) void this.#route(false);
  }

  async #route(withBody: boolean): Promise<void> {
    if (this.#routing || this.#ended) return;
    this.#routing = true;
    const raw = withBody ? Buffer.concat(this.#chunks, this.#size) : undefined;
    this.#chunks = [];
    let admitted = this.#admitted;
    if (admitted instanceof Promise) admitted = await admitted;
    // Refused: admission answered the 429 itself, or the stream went while it waited.
    if (!admitted || this.#ended) return;
    let pick: Pick | null;
    try {
      // A body-less request to an inference path is parsed as an empty body: a 400, as in proxy mode.
      const body = raw ?? (this.#picker.isInference(this.#path) ? Buffer.alloc(0) : undefined);
      pick = await this.#picker.pick(this.#path, this.#headers, body, this.#subset, this.#answer, this.#requestId);
    } catch (err) {
      if (!(err instanceof GatewayError)) this.#log.error({ err }, 'epp: routing failed');
      return this.#immediate(
        err instanceof GatewayError
          ? err
          : new GatewayError(500, 'internal gateway error', 'upstream_error', 'internal_error'),
      );
    }
    // Null: flow control shed it (answered) or the stream went while it was held.
    if (pick === null) return;
    if (this.#ended) return this.#picker.finish(pick, 499);
    this.#pick = pick;
    const value = pick.endpoints.join(',');
    const setHeaders = [
      header(DESTINATION, value),
      header('x-kvgate-worker', pick.worker.id),
      header('x-kvgate-strategy', pick.strategy),
      header('x-request-id', pick.requestId),
    ];
    if (pick.cachedBlocks !== undefined) setHeaders.push(header('x-kvgate-cached-blocks', String(pick.cachedBlocks)));
    if (pick.flowNote !== undefined) setHeaders.push(header('x-kvgate-flow', pick.flowNote));
    this.#send({
      request_headers: { response: { header_mutation: { set_headers: setHeaders }, clear_route_cache: true } },
      dynamic_metadata: {
        fields: { [LB_NAMESPACE]: { structValue: { fields: { [DESTINATION]: { stringValue: value } } } } },
      },
    });
    if (raw) this.#streamBack('request_body', raw, true);
  }

  /** Sends `body` back in chunks that Envoy accepts; views into the one buffer, never copies of it. */
  #streamBack(which: 'request_body' | 'response_body', body: Buffer | undefined, end: boolean): void {
    const total = body?.length ?? 0;
    if (total === 0) {
      this.#send({
        [which]: { response: { body_mutation: { streamed_response: { body: Buffer.alloc(0), end_of_stream: end } } } },
      });
      return;
    }
    for (let at = 0; at < total; at += MAX_CHUNK_BYTES) {
      const slice = body!.subarray(at, Math.min(total, at + MAX_CHUNK_BYTES));
      const last = at + MAX_CHUNK_BYTES >= total;
      this.#send({
        [which]: { response: { body_mutation: { streamed_response: { body: slice, end_of_stream: end && last } } } },
      });
    }
  }

  #responseHeaders(h: HttpHeaders, m: ProcessingRequest): void {
    for (const hv of h.headers?.headers ?? []) {
      if (hv.key === ':status') this.#status = Number(headerText(hv)) || 200;
    }
    const served = stringField(m.metadata_context?.filter_metadata?.[LB_NAMESPACE], SERVED);
    if (served && this.#pick) this.#picker.served(this.#pick, served.trim());
    this.#send({ response_headers: { response: {} } });
    if (h.end_of_stream) this.#finish(this.#status);
  }

  #responseBody(body: Buffer | undefined, end: boolean): void {
    if (this.#pick && body && body.length > 0) {
      if (this.#firstByte) {
        this.#firstByte = false;
        this.#picker.firstByte(this.#pick);
      }
      this.#pick.outcome?.data(body);
    }
    this.#streamBack('response_body', body, end);
    if (end) this.#finish(this.#status);
  }

  #immediate(err: GatewayError): void {
    const headers = { 'content-type': 'application/json', 'x-request-id': this.#requestId };
    this.#sendImmediate(err.status, headers, Buffer.from(JSON.stringify(err.toJSON())));
  }

  /** Answers the client in Envoy's place and ends the stream (and the request's hold on admission). */
  #sendImmediate(status: number, headers: Record<string, string>, body: Buffer): void {
    this.#send({
      immediate_response: {
        status: { code: status },
        headers: { set_headers: Object.entries(headers).map(([k, v]) => header(k, v)) },
        body,
        details: errorCode(body) ?? `kvgate_${status}`,
      },
    });
    this.#ended = true;
    this.#call.end();
    this.#answer.close();
  }

  #send(r: ProcessingResponse): void {
    if (this.#ended || this.#call.cancelled || this.#call.destroyed) return;
    this.#call.write(r);
  }

  #finish(status: number): void {
    if (this.#pick) this.#picker.finish(this.#pick, status);
    this.#answer.close();
  }

  #close(status: number): void {
    // A stream that ends before the response did is a client (or proxy) that went away.
    if (this.#pick && this.#pick.ticket.phase !== 'done') this.#finish(status === 200 ? 499 : status);
    if (!this.#ended) {
      this.#ended = true;
      if (!this.#call.destroyed) this.#call.end();
    }
    this.#answer.close();
  }
}

function header(key: string, value: string) {
  return { header: { key, raw_value: Buffer.from(value) }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' };
}

/** The OpenAI error code of a JSON error body, for the ImmediateResponse's `details`. */
function errorCode(body: Buffer): string | undefined {
  try {
    const code = (JSON.parse(body.toString('utf8')) as { error?: { code?: unknown } }).error?.code;
    return typeof code === 'string' ? code : undefined;
  } catch {
    return undefined;
  }
}

function stringField(s: Struct | undefined, key: string): string | undefined {
  return s?.fields?.[key]?.stringValue;
}

/** The subset hint: a list of `ip:port` strings (a single string is taken as one entry). */
function subsetHint(s: Struct | undefined): Set<string> | undefined {
  const v: StructValue | undefined = s?.fields?.[SUBSET];
  if (!v) return undefined;
  if (v.stringValue !== undefined)
    return new Set(
      v.stringValue
        .split(',')
        .map((e) => e.trim())
        .filter(Boolean),
    );
  return new Set((v.listValue?.values ?? []).flatMap((e) => (e.stringValue ? [e.stringValue] : [])));
}
