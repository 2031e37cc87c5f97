import type { ClientAnswer } from '../flow/answer.js';

/**
 * The ext_proc stream as admission and flow control see a client: a 429 they
 * write becomes an ImmediateResponse with the same status, headers and JSON
 * body as in proxy mode, and 'close' fires once, when the response ended or
 * the stream went (Envoy's client left, or Envoy cancelled it).
 */
export class StreamAnswer implements ClientAnswer {
  readonly #immediate: (status: number, headers: Record<string, string>, body: Buffer) => void;
  readonly #gone: () => boolean;
  #listeners: (() => void)[] = [];
  #closed = false;
  #status = 0;
  #headers: Record<string, string> = {};

  constructor(immediate: (status: number, headers: Record<string, string>, body: Buffer) => void, gone: () => boolean) {
    this.#immediate = immediate;
    this.#gone = gone;
  }

  get headersSent(): boolean {
    return this.#status !== 0;
  }

  get destroyed(): boolean {
    return this.#closed || this.#gone();
  }

  once(_event: 'close', listener: () => void): this {
    // A listener added after the end still runs: an admission slot taken late must not leak.
    if (this.#closed) queueMicrotask(listener);
    else this.#listeners.push(listener);
    return this;
  }

  writeHead(status: number, headers: Record<string, string | number>): this {
    this.#status = status;
    // Envoy frames the body itself: a length or connection header would only contradict it.
    for (const [k, v] of Object.entries(headers))
      if (!/^(content-length|connection|transfer-encoding)$/i.test(k)) this.#headers[k.toLowerCase()] = String(v);
    return this;
  }

  end(body: string): this {
    this.#immediate(this.#status, this.#headers, Buffer.from(body));
    this.close();
    return this;
  }

  /** The response ended or the stream went: runs the 'close' listeners, once. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const listeners = this.#listeners;
    this.#listeners = [];
    for (const l of listeners) l();
  }
}
