import type { IncomingHttpHeaders } from 'node:http';
import type { Dispatcher } from 'undici';
import type { BreakerPass } from './breaker.js';
import type { Worker } from '../fleet/fleet.js';
import { failureKind, retryableStatus, type FailureKind } from './retry.js';

export class ClientGoneError extends Error {
  override name = 'ClientGoneError';
  code = 'KVGATE_CLIENT_GONE';
}

/** What one attempt reports to the job that owns it (forward.ts). */
export interface AttemptOwner {
  /** The response head went to the client: no retry from here on. */
  readonly committed: boolean;
  /** The job reads the whole body and hands it over instead of streaming it. */
  readonly collecting: boolean;
  retryPossible(): boolean;
  commit(status: number, headers: IncomingHttpHeaders): void;
  /** False asks for a pause until the client drains. */
  write(chunk: Buffer, first: boolean): boolean;
  end(status: number): void;
  collected(status: number, headers: IncomingHttpHeaders, body: Buffer): void;
  failed(kind: FailureKind, message: string): void;
  broken(kind: FailureKind, message: string): void;
  clientAborted(): void;
}

/**
 * One dispatch to one worker, which feeds that worker's breaker. The response
 * head is held back until the first body byte, so a failure before it can
 * still be retried; a collecting job holds everything back until the end.
 */
export class Attempt implements Dispatcher.DispatchHandler {
  readonly #f: AttemptOwner;
  readonly #worker: Worker;
  readonly #pass: BreakerPass;
  #controller: Dispatcher.DispatchController | undefined;
  #abortReason: Error | undefined;
  #status = 0;
  #headers: IncomingHttpHeaders = {};
  /** A retryable status whose body is read and dropped before the retry. */
  #discard = false;
  #first = true;
  #chunks: Buffer[] | undefined;

  constructor(f: AttemptOwner, worker: Worker, pass: BreakerPass) {
    this.#f = f;
    this.#worker = worker;
    this.#pass = pass;
    if (f.collecting) this.#chunks = [];
  }

  abort(reason: Error): void {
    this.#abortReason = reason;
    this.#controller?.abort(reason);
  }

  resume(): void {
    this.#controller?.resume();
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.#abortReason) controller.abort(this.#abortReason);
  }

  onResponseStart(_c: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    this.#status = statusCode;
    this.#headers = headers;
    if (statusCode >= 500) this.#worker.breaker.failed(this.#pass, `status ${statusCode}`);
    else this.#worker.breaker.succeeded(this.#pass);
    this.#discard = !this.#chunks && retryableStatus(statusCode) && this.#f.retryPossible();
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#discard) return;
    if (this.#chunks) {
      this.#chunks.push(chunk);
      return;
    }
    if (!this.#f.committed) this.#f.commit(this.#status, this.#headers);
    const first = this.#first;
    this.#first = false;
    if (!this.#f.write(chunk, first)) controller.pause();
  }

  onResponseEnd(): void {
    if (this.#discard) return this.#f.failed('status', `status ${this.#status}`);
    if (this.#chunks) return this.#f.collected(this.#status, this.#headers, Buffer.concat(this.#chunks));
    if (!this.#f.committed) this.#f.commit(this.#status, this.#headers);
    this.#f.end(this.#status);
  }

  onResponseError(_c: Dispatcher.DispatchController, err: Error): void {
    if (err instanceof ClientGoneError || this.#abortReason) {
      this.#worker.breaker.released(this.#pass);
      this.#f.clientAborted();
      return;
    }
    if (this.#discard) return this.#f.failed('status', `status ${this.#status}`);
    const kind = failureKind(err);
    this.#worker.breaker.failed(this.#pass, `${kind}: ${err.message}`);
    if (this.#f.committed) this.#f.broken(kind, err.message);
    else this.#f.failed(kind, err.message);
  }
}
